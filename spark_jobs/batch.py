"""The batch plane in order: ingest -> prepare -> features -> recall -> samples -> publish.

Each run writes a new batch version under ``<home>/warehouse/versions/<v>`` (or
reruns chosen steps of an existing one, replacing only their outputs). The version
becomes ``CURRENT`` only after every step, publish included, succeeded: a failed run
leaves the previous version serving. Old complete versions beyond
``publish.keep_versions`` and failed ones are removed at the end of a good run.
Two runs never overlap on one home: each holds ``<home>/locks/batch.lock`` (an OS
file lock, freed when the process exits), and a second one stops at once saying who
holds it.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from pipeline.config import Config, as_dict
from pipeline.home import Home, HomeLocked

STEPS: tuple[str, ...] = ("ingest", "prepare", "features", "recall", "samples", "publish")
StepFn = Callable[..., dict[str, Any]]


def _step_fn(name: str) -> StepFn:
    from spark_jobs import features, ingest, prepare, publish, recall, samples

    return {"ingest": ingest.run, "prepare": prepare.run, "features": features.run, "recall": recall.run,
            "samples": samples.run, "publish": publish.run}[name]


class BatchError(RuntimeError):
    pass


def run_batch(cfg: Config, data_dir: Path | None, steps: list[str] | None = None, version: str | None = None,
              on_step: Callable[[str, str, dict[str, Any] | None], None] | None = None) -> dict[str, Any]:
    """Run ``steps`` (default: all) into ``version`` (default: a new one); returns the manifest."""
    home = Home(cfg.home)
    try:
        with home.lock("batch", what=f"batch steps {','.join(steps or STEPS)}"):
            return _run_batch(cfg, home, data_dir, steps, version, on_step)
    except HomeLocked as exc:
        raise BatchError(f"another batch is already running on home {home.root}: {exc}; wait for it to finish "
                         "(the lock is freed when that process exits)") from None


def _run_batch(cfg: Config, home: Home, data_dir: Path | None, steps: list[str] | None, version: str | None,
               on_step: Callable[[str, str, dict[str, Any] | None], None] | None) -> dict[str, Any]:
    steps = list(steps or STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise BatchError(f"unknown step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]  # always in dependency order
    if version is None:
        if steps[0] != "ingest":
            raise BatchError("a new batch version starts with 'ingest'; pass --version to rerun later steps of one")
        if data_dir is None:
            raise BatchError("no dataset given (--data DIR)")
        version = home.new_version()
        manifest: dict[str, Any] = {"version": version, "created": time.time(), "data": str(Path(data_dir).absolute()),
                                    "split": cfg.data.split, "steps": {}, "config": as_dict(cfg)}
    else:
        manifest = home.read_manifest(version)
        if manifest.get("split") != cfg.data.split:
            raise BatchError(f"version {version} was built with split={manifest.get('split')!r}, "
                             f"not {cfg.data.split!r}; start a new version instead")
        if "ingest" in steps:
            data_dir = Path(data_dir or manifest["data"])
    manifest["status"] = "building"
    home.write_manifest(version, manifest)

    from spark_jobs.session import get_spark

    spark = get_spark(cfg)
    try:
        for name in steps:
            if on_step:
                on_step(name, "start", None)
            t0 = time.perf_counter()
            fn = _step_fn(name)
            result = fn(spark, cfg, version, data_dir) if name == "ingest" else fn(spark, cfg, version)
            result["seconds"] = round(time.perf_counter() - t0, 2)
            manifest["steps"][name] = result
            home.write_manifest(version, manifest)
            if on_step:
                on_step(name, "done", result)
    except BaseException as exc:
        manifest["status"] = "failed"
        manifest["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        home.write_manifest(version, manifest)
        raise
    if all(s in manifest["steps"] for s in STEPS):
        manifest["status"] = "complete"
        home.write_manifest(version, manifest)
        home.set_current_version(version)
        manifest["removed_versions"] = prune_versions(home, cfg.publish.keep_versions)
    else:
        manifest["status"] = "partial"
        home.write_manifest(version, manifest)
    return manifest


def prune_versions(home: Home, keep: int) -> list[str]:
    """Remove failed versions and complete ones older than the newest ``keep`` (never CURRENT)."""
    if not home.versions.exists():
        return []
    current = home.current_version()
    complete, removed = [], []
    for d in sorted(p for p in home.versions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            status = home.read_manifest(d.name).get("status")
        except (FileNotFoundError, ValueError):
            status = "failed"
        if status == "complete":
            complete.append(d.name)
        elif status == "failed" and d.name != current:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    for name in complete[:-keep]:
        if name != current:
            shutil.rmtree(home.version_dir(name), ignore_errors=True)
            removed.append(name)
    return removed

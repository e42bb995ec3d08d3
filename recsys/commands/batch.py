"""`recsys batch`: the Spark batch plane with progress and a summary table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys.commands.data import ensure_default_data
from recsys.commands.ui import config_from, print_table, progress_bar
from pipeline.config import Config


def _batch_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = {}
    if getattr(args, "split", None):
        data["split"] = args.split
    if getattr(args, "on_bad_rows", None):
        data["on_bad_rows"] = args.on_bad_rows
    return {"data": data} if data else {}


def run_batch_with_progress(cfg: Config, data_dir: Path | None, steps: list[str] | None = None,
                            version: str | None = None) -> dict[str, Any]:
    from spark_jobs.batch import STEPS, run_batch

    chosen = steps or list(STEPS)
    with progress_bar() as progress:
        task = progress.add_task("starting Spark", total=len(chosen))

        def on_step(name: str, phase: str, result: dict[str, Any] | None) -> None:
            if phase == "start":
                progress.update(task, description=f"batch: {name}")
            else:
                progress.advance(task)
                progress.console.print(f"  [green]✓[/] {name} ({result.get('seconds', 0)} s)")

        manifest = run_batch(cfg, data_dir, steps=steps, version=version, on_step=on_step)
    rows = []
    for name, result in manifest["steps"].items():
        brief = {k: v for k, v in result.items() if k != "seconds" and not isinstance(v, dict)}
        rows.append([name, result.get("seconds"), json.dumps(brief, default=str)[:90]])
    print_table(f"batch version {manifest['version']} ({manifest['status']}, split={manifest['split']})",
                 ["step", "seconds", "summary"], rows)
    return manifest


def cmd_batch(args: argparse.Namespace) -> int:
    cfg = config_from(args, _batch_overrides(args))
    steps = args.steps.split(",") if args.steps else None
    data = Path(args.data) if args.data else None
    if data is None and args.version is None:
        data = ensure_default_data(cfg)
    run_batch_with_progress(cfg, data, steps=steps, version=args.version)
    return 0

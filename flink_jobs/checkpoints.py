"""Finding the retained checkpoint a restarted stream job resumes from.

Flink writes ``<dir>/<job id>/chk-<n>/_metadata``; a checkpoint is complete once its
``_metadata`` exists. Each run of the job has a new job id, so "the latest checkpoint"
is the newest complete one across job ids. Runs are retained on cancellation
(RETAIN_ON_CANCELLATION) and after a crash (nothing deletes them), which is what makes
``recsys stream`` resumable; ``prune`` removes the directories of older runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.config import Config
from pipeline.home import Home


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.stream.checkpoint_dir) if cfg.stream.checkpoint_dir else Home(cfg.home).checkpoints


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint (a ``chk-<n>`` directory with ``_metadata``), or None."""
    found = []
    for meta in Path(directory).glob("*/chk-*/_metadata"):
        try:
            found.append((meta.stat().st_mtime, int(meta.parent.name.split("-", 1)[1]), meta.parent))
        except (OSError, ValueError):
            continue  # a checkpoint being deleted or a stray name
    return max(found)[2] if found else None


def prune(directory: Path, keep: Path | None) -> list[Path]:
    """Delete the checkpoint directories of old runs, except the one holding ``keep``."""
    removed = []
    if not Path(directory).is_dir():
        return removed
    keep_run = keep.parent if keep is not None else None
    for run in Path(directory).iterdir():
        if run.is_dir() and run != keep_run and (run / "shared").exists():
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
    return removed

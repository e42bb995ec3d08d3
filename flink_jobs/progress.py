"""Which spool segments a *completed* checkpoint has consumed, known outside the job; and the retention step.

The FileSource does not say which files it has read (PyFlink's text-line format drops the path,
and the read order of a backlog is arbitrary), so the job reports a count instead, in a form that
only completed checkpoints publish:

- ``UserFeatures`` (keyed by user shard) emits, at most once a second per shard, a *progress record*
  ``{"shard", "consumed", "at"}``: the shard's counted lines (applied + duplicate + malformed,
  from keyed state) and the wall time ``at`` they were read. These go to an exactly-once FileSink
  under ``<checkpoint dir>/progress`` whose files become visible only when the checkpoint after
  them completes. Every line counted in a visible record was therefore read by the source before
  a completed checkpoint's barrier: that checkpoint (and every later one) has consumed it.
- A line counted by time ``at`` came from a segment that was visible by then, i.e. renamed into
  the spool before ``at``, so its ``st_ctime`` (set by the rename) is at most ``at``. Summing each
  shard's latest record up to ``at`` gives a lower bound of the lines counted by ``at``; when it
  reaches the lines of *every* segment with ``ctime <= at`` (plus the lines already deleted),
  each of those segments was read to its end before a completed checkpoint. That is the test of
  ``consumed_until``; it holds whenever the job had caught up with the spool at some moment, which
  under a steady trickle of traffic is most seconds and during a backlog is never (then nothing
  is deleted: safe, and the spool grows until the job catches up).

Deleting a consumed file is safe for the source: the continuous FileSource's enumerator re-lists
the directory every ``stream.monitor_interval_ms`` and skips the paths it has already processed
(``ContinuousFileSplitEnumerator.pathsAlreadyProcessed``, kept in the checkpoint); a path that is
no longer listed is simply not seen again.

``retain`` is the retention step (``recsys stream`` runs it every minute, ``recsys events prune``
on demand): compact the committed progress records into ``<checkpoint dir>/retention.json``,
delete the segments consumed and older than ``events.retain_hours`` (by ctime), delete old dead
letters. Assumes the Flink TaskManagers and the spool's file system share a clock (one machine,
or NTP): a TaskManager clock behind the spool's by d makes segments renamed within d before a
record look visible too late.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.config import Config
from pipeline.events import dead_letter_dir, segments, spool_dir
from pipeline.home import Home, HomeLocked, atomic_write_text
from pipeline.retention import (PruneLedger, count_lines, delete_segments, finish_deleting, prune_dead_letters,
                                reset_ledger)

from flink_jobs.checkpoints import checkpoint_dir

PROGRESS_PREFIX, PROGRESS_SUFFIX = "progress", ".jsonl"
PROGRESS_EVERY_MS = 1000  # how often a shard with new counts reports them
RETAIN_EVERY_S = 60.0     # how often `recsys stream` runs the retention step
STATE_NAME = "retention.json"


def progress_dir(cfg: Config) -> Path:
    return checkpoint_dir(cfg) / "progress"


def progress_record(shard: int, consumed: int, at: float) -> str:
    """One progress line (written by ``operators.UserFeatures``)."""
    return json.dumps({"shard": int(shard), "consumed": int(consumed), "at": float(at)}, separators=(",", ":"))


@dataclass(frozen=True)
class Segment:
    """What the rule needs of a spool segment: its path, its lines and when it became visible (ctime)."""

    path: Path
    lines: int
    visible_at: float


def consumed_until(records: Iterable[tuple[int, int, float]], spool: list[Segment], pruned_lines: int) -> float | None:
    """The latest time ``t`` such that every segment visible by ``t`` was consumed by a completed checkpoint.

    ``records``: (shard, consumed, at) from committed progress files. For each candidate ``t`` (a
    record's ``at``) the shards' latest counts up to ``t`` are summed (a lower bound of the lines
    counted by ``t``) and compared with the lines of every segment visible by ``t`` plus
    ``pruned_lines`` (deleted ones, which the job counted too). None when no moment qualifies.
    """
    by_time = sorted(records, key=lambda r: r[2])
    latest: dict[int, int] = {}
    sums: list[tuple[float, int]] = []
    for shard, consumed, at in by_time:
        latest[shard] = max(latest.get(shard, 0), consumed)
        sums.append((at, sum(latest.values())))
    visible = sorted(spool, key=lambda s: s.visible_at)
    best, i, lines_visible = None, 0, pruned_lines
    for at, counted in sums:
        while i < len(visible) and visible[i].visible_at <= at:
            lines_visible += visible[i].lines
            i += 1
        if counted >= lines_visible:
            best = at
    return best


def deletable(spool: list[Segment], consumed_t: float | None, now: float, retain_hours: float) -> list[Segment]:
    """Segments consumed (visible by ``consumed_t``) and visible for longer than the margin."""
    if consumed_t is None:
        return []
    return [s for s in spool if s.visible_at <= consumed_t and now - s.visible_at >= retain_hours * 3600]


# --- the retention state: committed progress records compacted ---------------------------------
def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"shards": {}, "consumed_until": None}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}): delete it to rebuild it from the next progress records") from None
    return data


def _committed_progress(directory: Path) -> list[Path]:
    """Progress files of completed checkpoints (the FileSink's in-progress ones start with '.')."""
    return sorted(p for p in Path(directory).glob(f"{PROGRESS_PREFIX}*{PROGRESS_SUFFIX}") if p.is_file())


def _parse_records(paths: list[Path]) -> list[tuple[int, int, float]]:
    out = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    out.append((int(d["shard"]), int(d["consumed"]), float(d["at"])))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not a progress record ({exc})") from None
    return out


_LINES: dict[Path, tuple[int, float, int]] = {}  # path -> (size, ctime, lines): segments are immutable once visible


def spool_segments(directory: Path, ignore: Iterable[str] = ()) -> list[Segment]:
    """The visible segments (less ``ignore``) with their lines, counted once per process (a day of
    segments is tens of thousands of files; `recsys stream` runs this every minute)."""
    skip = set(ignore)
    out = []
    for path in segments(directory):
        if path.name in skip:
            continue
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            known = _LINES.get(path)
            if known is None or known[:2] != (st.st_size, st.st_ctime):
                known = _LINES[path] = (st.st_size, st.st_ctime, count_lines(path))
            out.append(Segment(path, known[2], st.st_ctime))
    for gone in set(_LINES) - {s.path for s in out}:
        if gone.parent == Path(directory):
            del _LINES[gone]
    return out


def update_consumed(cfg: Config) -> float | None:
    """Fold newly committed progress files into the state file (then delete them); the consumed time."""
    state_path = checkpoint_dir(cfg) / STATE_NAME
    state = _read_state(state_path)
    files = _committed_progress(progress_dir(cfg))
    if not files:
        return state.get("consumed_until")
    records = [(int(s), int(c), float(t)) for s, (c, t) in state["shards"].items()] + _parse_records(files)
    spool = spool_dir(cfg)
    ledger = PruneLedger.read(spool)
    found = consumed_until(records, spool_segments(spool, ledger.deleting), ledger.lines)
    previous = state.get("consumed_until")
    shards: dict[str, list[float]] = {}
    for shard, consumed, at in records:  # each shard's newest count stands for it from now on
        key = str(shard)
        if key not in shards or (consumed, at) > (shards[key][0], shards[key][1]):
            shards[key] = [consumed, at]
    known = [t for t in (previous, found) if t is not None]
    best = max(known) if known else None  # consumed stays consumed: the time never goes back
    atomic_write_text(state_path, json.dumps({"shards": shards, "consumed_until": best}))
    for path in files:  # folded into the state: a crash before this only folds them again
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return best


def reset_lineage(cfg: Config) -> None:
    """The job starts from empty state: old progress and the deleted-lines count no longer apply."""
    with Home(cfg.home).lock("retention", "resetting the spool retention state"):
        with contextlib.suppress(FileNotFoundError):
            (checkpoint_dir(cfg) / STATE_NAME).unlink()
        for path in _committed_progress(progress_dir(cfg)):
            path.unlink()
        if cfg.events.log == "spool":
            reset_ledger(spool_dir(cfg))


def retain(cfg: Config, now: float | None = None) -> dict[str, int]:
    """The retention step: consumed spool segments past ``events.retain_hours``, old dead letters.

    Returns the counts deleted; {"skipped": 1} when another retention step holds the home's lock.
    """
    now = time.time() if now is None else now
    try:
        with Home(cfg.home).lock("retention", "deleting consumed spool segments and old dead letters"):
            out = {"segments": 0, "dead_letters": 0}
            if cfg.events.log == "spool" and spool_dir(cfg).is_dir():
                consumed_t = update_consumed(cfg)
                ledger = finish_deleting(spool_dir(cfg))
                spool = spool_segments(spool_dir(cfg), ledger.deleting)
                out["segments"] = delete_segments(spool_dir(cfg), [s.path for s in deletable(
                    spool, consumed_t, now, cfg.events.retain_hours)])
            if dead_letter_dir(cfg).is_dir():
                out["dead_letters"] = len(prune_dead_letters(dead_letter_dir(cfg), cfg.events.dead_letter_keep_days,
                                                             int(cfg.events.dead_letter_max_mb * 2**20), now))
            return out
    except HomeLocked:
        return {"skipped": 1}


def retain_quietly(cfg: Config, log_fn: Any) -> None:
    """``retain`` for the stream's loop: an error is logged, never fatal (the job goes on)."""
    try:
        out = retain(cfg)
    except (OSError, ValueError) as exc:
        log_fn(f"retention step failed, retrying in {RETAIN_EVERY_S:g} s: {exc}")
        return
    if out.get("segments") or out.get("dead_letters"):
        log_fn(f"retention: deleted {out['segments']} consumed spool segments, {out['dead_letters']} dead-letter files")


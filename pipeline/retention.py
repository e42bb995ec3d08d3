"""Bounded storage on the event path: deleting consumed spool segments and old dead letters.

The rules that decide *what* may go live with their owners (``flink_jobs.progress`` knows which
segments a completed checkpoint consumed); this module does the deleting, and keeps the spool's
line count right after a deletion.

Why a ledger: "has the stream job consumed the spool?" is answered by comparing the job's counted
lines (``online:stats``, exact from keyed state) with the lines in the spool
(``flink_jobs.control.SpoolCounter``). Once segments are deleted their lines are gone from the
directory but not from the job's count, so the spool keeps ``.pruned.json``: the lines of the
segments deleted since the job's state began (``lines``). A deletion is crash-safe: the ledger
first records the segments about to go (``deleting``, their lines already added), then they are
unlinked, then the list is cleared; a deletion interrupted in between is finished by the next
one, and a counter ignores the names listed there. The file is hidden (leading ``.``), so Flink's
FileSource never reads it.

Dead letters (the stream job's ``dead-*.jsonl`` files, one per checkpoint that saw a malformed
line) are deleted past ``events.dead_letter_keep_days``, then oldest first while their total size
exceeds ``events.dead_letter_max_mb``. Only committed files: the FileSink's in-progress files are
hidden (``.dead-...inprogress...``) and never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.home import atomic_write_text

LEDGER_NAME = ".pruned.json"
DEAD_LETTER_GLOB = "dead-*.jsonl"


def count_lines(path: Path) -> int:
    """Non-blank lines of a segment: what the stream job counts (it skips blank lines)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass
class PruneLedger:
    """What left the spool: ``lines`` deleted since the job's state began, ``deleting`` = names on their way out."""

    lines: int = 0
    deleting: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, directory: Path) -> "PruneLedger":
        try:
            data = json.loads((Path(directory) / LEDGER_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{Path(directory) / LEDGER_NAME} is unreadable ({exc}); it counts the spool lines "
                             "already deleted, so the stream job's progress cannot be judged without it") from None
        if not isinstance(data, dict) or not isinstance(data.get("lines"), int) or \
                not isinstance(data.get("deleting"), list):
            raise ValueError(f"{Path(directory) / LEDGER_NAME} is not a spool ledger ({str(data)[:80]})")
        return cls(lines=data["lines"], deleting=[str(n) for n in data["deleting"]])

    def write(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / LEDGER_NAME, json.dumps({"lines": self.lines, "deleting": self.deleting}))


def finish_deleting(directory: Path) -> PruneLedger:
    """Unlink what an interrupted deletion left (already counted in the ledger); the ledger afterwards."""
    ledger = PruneLedger.read(directory)
    if ledger.deleting:
        for name in ledger.deleting:
            with contextlib.suppress(FileNotFoundError):
                (Path(directory) / name).unlink()
        ledger.deleting = []
        ledger.write(directory)
    return ledger


def delete_segments(directory: Path, paths: list[Path]) -> int:
    """Delete spool segments, counting their lines into the ledger first (see the module docstring)."""
    ledger = finish_deleting(directory)
    if not paths:
        return 0
    ledger.lines += sum(count_lines(p) for p in paths)
    ledger.deleting = [p.name for p in paths]
    ledger.write(directory)
    finish_deleting(directory)
    return len(paths)


def reset_ledger(directory: Path) -> None:
    """The job starts from empty state: it will count only the lines still in the spool."""
    finish_deleting(directory)
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / LEDGER_NAME).unlink()


def prune_dead_letters(directory: Path, keep_days: float, max_bytes: int, now: float) -> list[Path]:
    """Delete committed dead-letter files older than ``keep_days`` (0: no age limit), then the oldest
    while the rest exceed ``max_bytes`` (0: no size limit). Returns what was deleted."""
    files = []
    for path in Path(directory).glob(DEAD_LETTER_GLOB):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            files.append((st.st_mtime, path.name, path, st.st_size))
    files.sort()
    removed: list[Path] = []
    total = sum(f[3] for f in files)
    for mtime, _, path, size in files:
        too_old = keep_days > 0 and now - mtime > keep_days * 86_400
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        total -= size
        removed.append(path)
    return removed

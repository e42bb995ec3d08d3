"""Bounded storage on the event path, the logic without Flink: which segments are consumed, the ledger, dead letters.

The job's side (progress records committed by real checkpoints, deleting read segments under a
running and a restored job) is in tests/test_stream_job.py; here the progress files are written
by hand in the committed format, so every rule can be pinned with exact times.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from flink_jobs.control import SpoolCounter
from flink_jobs.progress import (Segment, consumed_until, deletable, progress_dir, progress_record, reset_lineage,
                                 retain)
from pipeline.config import ConfigError
from pipeline.events import SpoolWriter, dead_letter_dir, new_event, segments, spool_dir
from pipeline.retention import LEDGER_NAME, PruneLedger, delete_segments, finish_deleting, prune_dead_letters
from tests.conftest import make_config


def _seg(name: str, lines: int, visible_at: float) -> Segment:
    return Segment(Path(name), lines, visible_at)


def test_consumed_until_is_the_last_moment_the_counted_lines_cover_every_visible_segment() -> None:
    spool = [_seg("a", 5, 1.0), _seg("b", 5, 2.0), _seg("c", 4, 8.0)]
    assert consumed_until([], spool, 0) is None
    # At t=3 the job had counted 10 lines and a+b (10 lines) were all that was visible: both read.
    assert consumed_until([(0, 10, 3.0)], spool, 0) == 3.0
    # At t=9 only 12 of the 14 visible lines: not every visible segment read; t=3 still holds.
    assert consumed_until([(0, 10, 3.0), (0, 12, 9.0)], spool, 0) == 3.0
    assert consumed_until([(0, 10, 3.0), (0, 14, 9.0)], spool, 0) == 9.0


def test_a_count_that_could_come_from_a_newer_segment_proves_nothing() -> None:
    # a and b visible by t=3, 5 lines counted: either one may be unread (a backlog is read in any order).
    assert consumed_until([(0, 5, 3.0)], [_seg("a", 5, 1.0), _seg("b", 5, 2.0)], 0) is None


def test_shards_are_summed_with_their_latest_count_up_to_each_moment() -> None:
    spool = [_seg("a", 5, 0.5), _seg("b", 3, 4.0)]
    records = [(0, 3, 1.0), (1, 2, 2.0), (1, 2, 5.0), (0, 5, 6.0)]
    # t=2: 3 + 2 = 5 covers a; t=5: 3 + 2 = 5 < 8 (b visible); t=6: 5 + 2 = 7 < 8.
    assert consumed_until(records, spool, 0) == 2.0
    assert consumed_until(records + [(1, 3, 7.0)], spool, 0) == 7.0


def test_deleted_lines_count_on_both_sides() -> None:
    # 100 lines were deleted earlier; the job's count includes them.
    assert consumed_until([(0, 105, 3.0)], [_seg("a", 5, 1.0)], 100) == 3.0
    assert consumed_until([(0, 104, 3.0)], [_seg("a", 5, 1.0)], 100) is None


def test_deletable_needs_consumed_and_the_margin() -> None:
    spool = [_seg("a", 1, 100.0), _seg("b", 1, 200.0), _seg("c", 1, 300.0)]
    assert deletable(spool, None, 10_000.0, 0.0) == []
    assert [s.path.name for s in deletable(spool, 250.0, 300.0, 0.0)] == ["a", "b"]
    assert [s.path.name for s in deletable(spool, 250.0, 100.0 + 3600, 1.0)] == ["a"]  # b: not an hour yet


def _spool_with(cfg, n_segments: int) -> list[Path]:  # noqa: ANN001
    writer = SpoolWriter(spool_dir(cfg), roll_seconds=60.0, roll_events=3)
    for i in range(n_segments * 3):
        writer.append(new_event(1 + i % 4, 1 + i, 4.0, 1_000_000 + i))
    writer.close()
    return segments(spool_dir(cfg))


def _commit_progress(cfg, *records: tuple[int, int, float]) -> None:  # noqa: ANN001
    """What the job's progress FileSink leaves when a checkpoint completes (format: flink_jobs.progress)."""
    out = progress_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    n = len(list(out.glob("progress-*")))
    (out / f"progress-test-{n}.jsonl").write_text("".join(progress_record(*r) + "\n" for r in records))


def test_retain_deletes_only_consumed_segments_past_the_margin(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    segs = _spool_with(cfg, 3)
    assert len(segs) == 3
    t_all = max(s.stat().st_ctime for s in segs)
    # No progress committed (the job never ran, or is stopped before a checkpoint): nothing goes, margin 0 or not.
    assert retain(cfg.replace("events", retain_hours=0), now=t_all + 10 ** 6)["segments"] == 0
    # Every line counted by t_all, committed by a checkpoint; the default margin (24 h) has not passed.
    _commit_progress(cfg, (0, 5, t_all), (3, 4, t_all))
    assert retain(cfg, now=t_all + 3600)["segments"] == 0 and len(segments(spool_dir(cfg))) == 3
    assert not list(progress_dir(cfg).glob("progress-*")), "committed progress is folded into the state file"
    # A newer segment the job has not read yet (renamed after t_all: past the file system's clock tick).
    time.sleep(0.05)
    newer = _spool_with(cfg, 1)[-1]
    counter = SpoolCounter(spool_dir(cfg))
    assert counter() == 12
    assert retain(cfg, now=t_all + 25 * 3600) == {"segments": 3, "dead_letters": 0}
    assert segments(spool_dir(cfg)) == [newer]
    assert PruneLedger.read(spool_dir(cfg)) == PruneLedger(lines=9, deleting=[])
    assert counter() == 12, "deleted lines still count as accepted: waits for the job stay right"
    assert retain(cfg.replace("events", retain_hours=0), now=t_all + 10 ** 6)["segments"] == 0, "newer is unread"
    reset_lineage(cfg)  # --from-start: the job will count only what is still there
    assert SpoolCounter(spool_dir(cfg))() == 3 and not (spool_dir(cfg) / LEDGER_NAME).exists()


def test_an_interrupted_deletion_is_finished_and_counted_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    segs = _spool_with(cfg, 2)
    # Crash after the ledger recorded the deletion, before the unlink.
    PruneLedger(lines=3, deleting=[segs[0].name]).write(spool_dir(cfg))
    assert SpoolCounter(spool_dir(cfg))() == 6, "the segment on its way out is counted once, by the ledger"
    assert finish_deleting(spool_dir(cfg)) == PruneLedger(lines=3, deleting=[])
    assert segments(spool_dir(cfg)) == segs[1:]
    assert delete_segments(spool_dir(cfg), segs[1:]) == 1
    assert PruneLedger.read(spool_dir(cfg)).lines == 6 and SpoolCounter(spool_dir(cfg))() == 6


def test_a_broken_ledger_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text("{nope")
    with pytest.raises(ValueError, match=r"\.pruned\.json is unreadable"):
        PruneLedger.read(tmp_path)


def test_dead_letters_past_their_age_or_beyond_the_total_size_are_deleted_oldest_first(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    ages_days = {"dead-a-0.jsonl": 10, "dead-b-0.jsonl": 6, "dead-c-0.jsonl": 3, "dead-d-0.jsonl": 1}
    for name, days in ages_days.items():
        path = tmp_path / name
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - days * 86_400, now - days * 86_400))
    hidden = tmp_path / ".dead-e-0.jsonl.inprogress.1234"  # the FileSink's open file: never touched
    hidden.write_bytes(b"x")
    os.utime(hidden, (now - 30 * 86_400,) * 2)
    assert [p.name for p in prune_dead_letters(tmp_path, 7, 0, now)] == ["dead-a-0.jsonl"]
    assert prune_dead_letters(tmp_path, 7, 3000, now) == []
    assert [p.name for p in prune_dead_letters(tmp_path, 0, 1500, now)] == ["dead-b-0.jsonl", "dead-c-0.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dead-e-0.jsonl.inprogress.1234", "dead-d-0.jsonl"]


def test_retain_prunes_dead_letters_by_the_configured_days(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, events={"dead_letter_keep_days": 2})
    dead_letter_dir(cfg).mkdir(parents=True)
    old, new = dead_letter_dir(cfg) / "dead-x-0.jsonl", dead_letter_dir(cfg) / "dead-x-1.jsonl"
    for path in (old, new):
        path.write_text(json.dumps({"raw": "x", "error": "not JSON", "seen_at": 0}) + "\n")
    os.utime(old, (old.stat().st_mtime - 3 * 86_400,) * 2)
    assert retain(cfg)["dead_letters"] == 1 and not old.exists() and new.exists()


@pytest.mark.parametrize("key", ["retain_hours", "dead_letter_keep_days", "dead_letter_max_mb"])
def test_negative_retention_settings_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"events.{key} must be >= 0"):
        make_config(tmp_path, events={key: -1})

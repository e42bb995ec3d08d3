"""The event schema and the spool: what every writer and the stream job agree on."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.events import (EventError, SpoolWriter, keyed_event_id, new_event, parse_event, read_spool, recover_orphans,
                             segments)


def test_new_event_round_trips_and_validates() -> None:
    event = new_event(7, 1193, 4.5, ts=978300760)
    assert parse_event(event.to_json()) == event and len(event.event_id) == 32
    assert new_event(7, 1193, 3).event_id != new_event(7, 1193, 3).event_id
    for bad, words in [((0, 1, 4.0), "user_id"), ((1, -5, 4.0), "movie_id"), ((1, 1, 5.5), "rating"),
                       ((1, 1, 3.3), "rating"), ((1, 1, float("nan")), "rating"), ((1, 1, True), "rating")]:
        with pytest.raises(EventError, match=words):
            new_event(*bad)


def test_an_idempotency_key_gives_the_same_event_id_for_the_same_user_only() -> None:
    first, retry = new_event(7, 1193, 4.5, idempotency_key="k-1"), new_event(7, 1193, 4.5, idempotency_key="k-1")
    assert first.event_id == retry.event_id == keyed_event_id(7, "k-1") and len(first.event_id) == 32
    assert parse_event(first.to_json()) == first
    assert new_event(8, 1193, 4.5, idempotency_key="k-1").event_id != first.event_id
    assert new_event(7, 1193, 4.5, idempotency_key="k-2").event_id != first.event_id
    assert keyed_event_id(7, "~" * 128)                                          # the longest key
    for bad in ["", "x" * 129, "caf\u00e9", "tab\there", "new\nline", 42]:
        with pytest.raises(EventError, match="idempotency_key must be 1 to 128 printable ASCII characters"):
            new_event(7, 1193, 4.5, idempotency_key=bad)  # type: ignore[arg-type]
    with pytest.raises(EventError, match="not both"):
        new_event(7, 1193, 4.5, event_id="a", idempotency_key="k")


@pytest.mark.parametrize("line, words", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 4, "ts": 1, "mood": "happy"}', "unknown field(s): mood"),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 4}', "missing field(s): ts"),
    ('{"event_id": "a", "user_id": "1", "movie_id": 2, "rating": 4, "ts": 1}', "user_id must be an integer"),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2.5, "rating": 4, "ts": 1}', "movie_id must be an integer"),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 0, "ts": 1}', "rating must be between"),
    ('{"event_id": "", "user_id": 1, "movie_id": 2, "rating": 4, "ts": 1}', "event_id"),
    # poison lines that once crash-looped the stream job: each is now one named dead letter
    ('{"event_id": "a", "user_id": 9223372036854775808, "movie_id": 2, "rating": 4, "ts": 1}', "user_id must be in 1..2147483647"),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 4, "ts": 9300000000000000}', "ts must be in 0.."),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 4, "ts": 4102444800}', "ts must be in 0.."),
    ('{"event_id": "a", "user_id": 1, "movie_id": 2, "rating": 1' + "0" * 400 + ', "ts": 1}', "a 401-digit number"),
    ('{"event_id": "a", "user_id": 1' + "0" * 5000 + ', "movie_id": 2, "rating": 4, "ts": 1}', "exceeds 4096"),
    ('{"event_id": "a", "user_id": 1' + "0" * 4400 + ', "movie_id": 2, "rating": 4, "ts": 1}', "exceeds 4096"),
    ("[" * 3000 + "]" * 3000, "exceeds 4096"),
    ("[" * 2000, "JSON"),                       # deeper than the parser recurses
])
def test_parse_event_names_the_problem(line: str, words: str) -> None:
    with pytest.raises(EventError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_event(line)


def test_spool_rolls_by_count_and_time_and_never_shows_half_a_segment(tmp_path: Path) -> None:
    spool = SpoolWriter(tmp_path, roll_seconds=0.3, roll_events=3)
    events = [new_event(1, 10 + i, 4.0, ts=100 + i) for i in range(4)]
    for e in events:
        spool.append(e)
    assert len(segments(tmp_path)) == 1                      # 3 events: rolled by count
    assert [parse_event(x) for x in read_spool(tmp_path)] == events[:3]   # the 4th is still in progress, hidden
    deadline = time.monotonic() + 5
    while len(segments(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [parse_event(x) for x in read_spool(tmp_path)] == events      # rolled by time
    assert all(p.name.startswith(("events-", ".")) for p in tmp_path.iterdir())
    spool.close()
    with pytest.raises(RuntimeError):
        spool.append(events[0])


def test_a_dead_writers_segment_is_recovered(tmp_path: Path) -> None:
    code = ("import sys, os; sys.path.insert(0, os.getcwd()); from pathlib import Path; "
            "from pipeline.events import SpoolWriter, new_event; "
            f"s = SpoolWriter(Path({str(tmp_path)!r}), roll_seconds=3600, roll_events=100); "
            "s.append(new_event(1, 2, 3.0, ts=5)); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert not segments(tmp_path) and [p for p in tmp_path.iterdir() if p.name.startswith(".seg-")]
    assert len(recover_orphans(tmp_path)) == 1
    assert [json.loads(x)["movie_id"] for x in read_spool(tmp_path)] == [2]
    assert os.listdir(tmp_path) == [p.name for p in segments(tmp_path)]


def test_the_spool_health_says_failing_with_the_error_and_since_when_until_a_roll_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import events as E

    broken: list[bool] = [False]
    real_rename = os.rename

    def rename(src, dst):  # noqa: ANN001, ANN202 - an injected disk error while broken[0]
        if broken[0]:
            raise OSError(28, "No space left on device (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(E.os, "rename", rename)
    spool = SpoolWriter(tmp_path, roll_seconds=3600, roll_events=1000)
    try:
        spool.append(new_event(1, 2, 4.0))
        assert spool.health() == {"log": "spool", "state": "ok", "pending_events": 1, "pending_segments": 1}
        broken[0] = True
        before = time.time()
        with pytest.raises(OSError):
            spool.flush()
        failing = spool.health()
        assert failing["state"] == "failing" and "No space left on device" in failing["last_error"]
        since = calendar.timegm(time.strptime(failing["failing_since"], "%Y-%m-%dT%H:%M:%SZ"))
        assert before - 1 <= since <= time.time() + 1 and failing["pending_events"] == 1
        with pytest.raises(OSError):
            spool.flush()
        assert spool.health()["failing_since"] == failing["failing_since"]      # since the first failure
        broken[0] = False
        spool.flush()
        assert spool.health() == {"log": "spool", "state": "ok", "pending_events": 0, "pending_segments": 0}
        assert len(list(read_spool(tmp_path))) == 1
    finally:
        spool.close()


def _left_behind(directory: Path, writer_id: str, movie_id: int, lock_file: bool = True) -> Path:
    """What a writer killed mid-segment leaves: its open segment and (newer writers) its lock file, unlocked."""
    segment = directory / f".seg-{writer_id}-000001"
    segment.write_text(new_event(1, movie_id, 3.0, ts=5).to_json() + "\n")
    if lock_file:
        (directory / f".writer-{writer_id}.lock").write_text("{}")
    return segment


def test_a_crashed_writer_with_our_own_pid_is_recovered(tmp_path: Path) -> None:
    """PID 1 in a restarted container: the predecessor had this very pid, and its segment is still published."""
    _left_behind(tmp_path, f"{os.getpid()}-0000000000001-deadbeef", 2)
    _left_behind(tmp_path, str(os.getpid()), 3, lock_file=False)       # the pid-only naming of earlier versions
    spool = SpoolWriter(tmp_path, roll_seconds=3600, roll_events=100)
    try:
        assert sorted(json.loads(x)["movie_id"] for x in read_spool(tmp_path)) == [2, 3]
        assert spool.writer_id.startswith(f"{os.getpid()}-") and spool.writer_id != f"{os.getpid()}-0000000000001-deadbeef"
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("events-")] == \
            [f".writer-{spool.writer_id}.lock"]                        # the dead writer's lock file is gone
        other = SpoolWriter(tmp_path, roll_seconds=3600, roll_events=100)   # a second writer in this process
        assert other.writer_id != spool.writer_id and recover_orphans(tmp_path) == []
        other.close()
    finally:
        spool.close()
    assert sorted(os.listdir(tmp_path)) == [p.name for p in segments(tmp_path)]  # clean stops leave no lock file


def test_a_running_writers_segment_is_never_taken(tmp_path: Path) -> None:
    """Another process runs a writer with an open segment: neither a new writer nor a recovery touches it
    while that process lives; once it is killed (-9: no clean-up), its lock is free and the segment is published."""
    code = ("import sys, os; sys.path.insert(0, os.getcwd()); from pathlib import Path; "
            "from pipeline.events import SpoolWriter, new_event; "
            f"s = SpoolWriter(Path({str(tmp_path)!r}), roll_seconds=3600, roll_events=100); "
            "s.append(new_event(1, 7, 3.0, ts=5)); print('ready', flush=True); sys.stdin.read()")
    live = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "ready"
        open_segment = next(p for p in tmp_path.iterdir() if p.name.startswith(".seg-"))
        spool = SpoolWriter(tmp_path, roll_seconds=3600, roll_events=100)
        assert recover_orphans(tmp_path) == [] and open_segment.exists() and not segments(tmp_path)
        spool.close()
    finally:
        live.kill()
        live.wait(30)
    assert [p.name.startswith("events-") for p in recover_orphans(tmp_path)] == [True]
    assert [json.loads(x)["movie_id"] for x in read_spool(tmp_path)] == [7]
    assert os.listdir(tmp_path) == [p.name for p in segments(tmp_path)]


def test_the_roller_survives_an_io_error_and_rolls_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from pipeline import events as E

    real_rename, failures = os.rename, []

    def flaky_rename(src, dst):  # noqa: ANN001, ANN202
        if not failures:
            failures.append(dst)
            raise OSError(28, "No space left on device (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(E.os, "rename", flaky_rename)
    spool = SpoolWriter(tmp_path, roll_seconds=0.05, roll_events=1000)
    try:
        first = new_event(1, 2, 4.0)
        spool.append(first)
        end = time.monotonic() + 30
        while not list(read_spool(tmp_path)) and time.monotonic() < end:
            time.sleep(0.05)
        assert failures and spool._timer.is_alive()
        assert [parse_event(x) for x in read_spool(tmp_path)] == [first]       # retried, nothing lost
        assert spool.health() == {"log": "spool", "state": "ok", "pending_events": 0, "pending_segments": 0}
        second = new_event(1, 3, 5.0)
        spool.append(second)
        spool.flush()
        assert [parse_event(x) for x in read_spool(tmp_path)] == [first, second]
    finally:
        spool.close()

"""The stream job end to end on the local mini-cluster: spool events in, Redis features out.

One job run is shared by every test here (starting Flink costs ~20 s on two cores): the
module fixture drives three phases through `recsys stream` in a subprocess
(``flink_jobs.control.start_stream``) and snapshots Redis after each:

A. events of a handful of users and movies (one user's events written newest first,
   so the reorder path runs), a segment with malformed lines between good ones, and a
   replayed segment (duplicate event ids);
B. a few events three hours later: the watermark moves and earlier trending counts
   leave the window;
C. a burst of events, the job SIGKILLed mid-stream (driver, JVM and Python workers),
   then started again: it restores the latest retained checkpoint and must count every
   event exactly once.

Expected values come from ``pipeline.features.fold_user`` and from the batch job's own
per-user function (``spark_jobs.features.user_fold_fn``) on the same events.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from typing import Any, Callable

import pandas as pd
import pytest
import redis

from flink_jobs.control import start_stream, stream_stats
from flink_jobs.online_state import bucket_expiry_ms, bucket_of
from pipeline import keys as K
from pipeline.events import EventError, SpoolWriter, dead_letter_dir, new_event, parse_event, segments, spool_dir
from pipeline.features import fold_user
from pipeline.schemas import GENRES
from tests.conftest import make_config

pytestmark = [pytest.mark.flink, pytest.mark.redis]

T0 = 1_000_000_000
SLIDE_S, WINDOW_S = 5 * 60, 60 * 60
HISTORY_LEN = 20
VERSION = "vstreamtest.1"
# Movies 1-35 are listed in the published version, 36-40 have a hash but are not listed, 41+ are unknown.
GENRES_OF = {m: sorted({GENRES[m % 18], GENRES[(m * 5) % 18], GENRES[(m * 11) % 18]})[: 1 + m % 3] for m in range(1, 41)}
BAD_LINES = ['{"event_id":"b1","user_id":0,"movie_id":3,"rating":4,"ts":5}', "this is not json",
             '{"event_id":"b2","user_id":3,"movie_id":3,"rating":7.5,"ts":5}', "[1, 2, 3]",
             '{"event_id":"b3","user_id":3,"movie_id":3,"rating":4,"ts":5,"extra":1}']


def _poll(what: str, fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 60.0,
          every: float = 0.2) -> Any:
    """Poll until ``ok(fn())``; on timeout return the last value (the assertion that follows shows it)."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = fn()
    return value


def _publish_genres(client: redis.Redis, keys: K.Keys) -> None:
    pipe = client.pipeline()
    for m, genres in GENRES_OF.items():
        pipe.hset(keys.movie(VERSION, m), mapping={"genres": json.dumps(genres), "title": json.dumps(f"Movie {m}")})
    pipe.set(keys.movie_ids(VERSION), json.dumps(list(range(1, 36))))
    pipe.set(keys.current(), VERSION)
    pipe.execute()


def _phase_a_events(rng: random.Random) -> list:
    """Users 1-7 rate in time order over ten days (decay matters); user 8 is written newest first."""
    events = []
    for user in range(1, 9):
        ts = T0 + user * 7
        for i in range(26 if user != 8 else 18):
            ts += rng.choice([11, 45, 600, 3 * 3600, 86_400])
            movie = rng.choice(list(range(1, 44)))
            events.append(new_event(user, movie, rng.choice([1, 2, 2.5, 3, 3.5, 4, 4.5, 5]), ts, f"a-{user}-{i}"))
    last = max(e.ts for e in events)
    for user in (1, 2, 3):  # a burst at the end, so several movies are still in the window
        events += [new_event(user, 10 + user * 3 + k, 4.0, last + 60 * k + user, f"a-{user}-end{k}") for k in range(3)]
    return events


def _snapshot(client: redis.Redis, keys: K.Keys, users: set[int], movies: set[int]) -> dict[str, Any]:
    return {
        "users": {u: K.decode_fields(client.hgetall(keys.online_user(u))) for u in users},
        "hist": {u: K.decode_history(client.get(keys.online_history(u))) for u in users},
        "movies": {m: K.decode_fields(client.hgetall(keys.online_movie(m))) for m in movies},
        "trending": {int(m): int(s) for m, s in client.zrange(keys.trending(), 0, -1, withscores=True)},
        "stats": stream_stats(client, keys.prefix),
    }


def expected_trending(events: list) -> dict[int, int]:
    """Counts per movie of the events still in the window once the watermark reached max(ts) - slide."""
    watermark_ms = max(e.ts for e in events) * 1000 - SLIDE_S * 1000 - 1
    out: dict[int, int] = {}
    for e in events:
        if bucket_expiry_ms(bucket_of(e.ts, SLIDE_S), SLIDE_S, WINDOW_S) > watermark_ms:
            out[e.movie_id] = out.get(e.movie_id, 0) + 1
    return out


@pytest.fixture(scope="module")
def run(redis_srv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("stream-home")
    cfg = make_config(home, redis_srv.url, features={"history_len": HISTORY_LEN},
                      stream={"checkpoint_interval_ms": 1000, "monitor_interval_ms": 200, "trending_window_minutes": 60,
                              "trending_slide_minutes": 5, "sink_batch": 50,
                              # A user has ~60 events in the burst, read back in any segment order: keep
                              # them all reorderable so features stay exactly equal to fold_user.
                              "reorder_events": 128},
                      events={"roll_seconds": 60.0, "roll_events": 40})
    client = redis.Redis.from_url(redis_srv.url)
    keys = K.Keys(cfg.redis.key_prefix)
    _publish_genres(client, keys)
    rng = random.Random(5)
    spool = spool_dir(cfg)
    writer = SpoolWriter(spool, roll_seconds=60.0, roll_events=40)
    out: dict[str, Any] = {"cfg": cfg, "keys": keys}

    # --- phase A --------------------------------------------------------------------------
    a = _phase_a_events(rng)
    in_time_order = sorted((e for e in a if e.user_id != 8), key=lambda e: e.ts)
    for e in in_time_order:
        writer.append(e)
    writer.flush()
    replayed = segments(spool)[0]
    for e in sorted((e for e in a if e.user_id == 8), key=lambda e: -e.ts):
        writer.append(e)  # newest first: the job must put them back in time order
    writer.flush()
    good_around_bad = [new_event(20, 2, 4.0, T0 + 100, "g1"), new_event(20, 3, 3.0, T0 + 200, "g2"),
                       new_event(21, 2, 5.0, T0 + 300, "g3")]
    lines = [good_around_bad[0].to_json(), BAD_LINES[0], BAD_LINES[1], good_around_bad[1].to_json(), BAD_LINES[2],
             "", BAD_LINES[3], good_around_bad[2].to_json(), BAD_LINES[4]]
    (spool / "events-0000000000001-bad-000001.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(replayed, spool / "events-9999999999998-replay-000001.jsonl")  # every id in it seen before
    out["duplicates"] = sum(1 for line in replayed.read_text().splitlines() if line.strip())
    a += good_around_bad

    t0 = time.monotonic()
    handle = start_stream(cfg)
    try:
        handle.wait_until_consumed(timeout=180)
        print(f"phase A consumed ({time.monotonic() - t0:.1f} s)")
        out["A"] = _snapshot(client, keys, {e.user_id for e in a}, {e.movie_id for e in a})
        out["A"]["trending"] = _poll("trending A", lambda: _snapshot(client, keys, set(), set())["trending"],
                                     lambda t: t == expected_trending(a))
        out["events_A"] = a
        out["ttl_A"] = {name: client.ttl(key) for name, key in [
            ("hist", keys.online_history(1)), ("user", keys.online_user(1)), ("movie", keys.online_movie(a[0].movie_id)),
            ("trending", keys.trending()), ("stats", keys.stream_stats())]}
        out["dead_letters"] = _poll("dead letters", lambda: sorted(dead_letter_dir(cfg).glob("dead*.jsonl")),
                                    lambda files: sum(len(f.read_text().splitlines()) for f in files) >= len(BAD_LINES))

        # --- phase B: three hours later ---------------------------------------------------
        later = max(e.ts for e in a) + 3 * 3600
        b = [new_event(50, 3, 4.0, later + i, f"b-{i}") for i in range(3)]
        for e in b:
            writer.append(e)
        writer.flush()
        handle.wait_until_consumed(timeout=60)
        out["B"] = {"trending": _poll("trending B", lambda: _snapshot(client, keys, set(), set())["trending"],
                                      lambda t: t == {3: 3})}
        out["trending_A_expected"] = expected_trending(a)
        print(f"phase B done ({time.monotonic() - t0:.1f} s)")

        # --- phase C: a burst, a crash mid-stream, a restart -------------------------------
        c = []
        for i in range(3000):
            user = rng.choice(list(range(1, 9)) + list(range(60, 100)))
            c.append(new_event(user, rng.randint(1, 45), rng.choice([1, 3, 4, 5]), later + 60 + i, f"c-{i}"))
        before = handle.stats()["consumed"]
        for e in c:
            writer.append(e)
        writer.flush()
        _poll("half of phase C", lambda: handle.stats()["consumed"], lambda n: n >= before + len(c) // 10, timeout=120,
              every=0.02)
        out["consumed_at_kill"] = handle.stats()["consumed"] - before
        print(f"phase C: killed after {out['consumed_at_kill']} of {len(c)} lines ({time.monotonic() - t0:.1f} s)")
        handle.kill()
    except BaseException:
        print(handle.log_tail())
        handle.kill()
        raise
    writer.close()

    everything = a + b + c
    handle = start_stream(cfg)
    try:
        out["final_stats"] = handle.wait_until_consumed(timeout=180)
        print(f"restarted run consumed everything: {out['final_stats']} ({time.monotonic() - t0:.1f} s)")
        out["C"] = _snapshot(client, keys, {e.user_id for e in everything}, {e.movie_id for e in everything})
        out["log"] = handle.log_tail(20_000)
        out["D"] = _phase_d_retention(cfg, handle, rng, later + 10_000)
    finally:
        handle.stop()
    out["all_events"] = everything
    out["trending_C_expected"] = expected_trending(everything)
    client.close()
    return out


def _phase_d_retention(cfg, handle, rng: random.Random, ts: int) -> dict[str, Any]:  # noqa: ANN001
    """Phase D (after the snapshots): the retention step against the running, the stopped and the restored job."""
    from flink_jobs.control import SpoolCounter
    from flink_jobs.progress import retain

    spool, now_cfg = spool_dir(cfg), cfg.replace("events", retain_hours=0)
    out: dict[str, Any] = {"before": segments(spool)}
    out["default_margin"] = retain(cfg)  # everything consumed, nothing 24 h old
    out["after_default_margin"] = segments(spool)
    # Margin 0: every consumed segment goes once a checkpoint has committed the progress that proves it.
    _poll("consumed segments deleted", lambda: retain(now_cfg) and segments(spool), lambda left: not left, timeout=60)
    out["after_margin_0"] = segments(spool)
    out["counter_after_delete"], out["stats_after_delete"] = SpoolCounter(spool)(), handle.stats()
    # The running job goes on reading new segments after its read ones are gone.
    writer = SpoolWriter(spool, roll_seconds=60.0, roll_events=40)
    live = [new_event(300 + i % 3, 1 + i % 30, 4.0, ts + i, f"d-live-{i}") for i in range(10)]
    for e in live:
        writer.append(e)
    writer.flush()
    out["live_stats"] = handle.wait_until_consumed(timeout=60)
    out["live_left"] = _poll("live segment deleted", lambda: retain(now_cfg) and segments(spool),
                             lambda left: not left, timeout=60)
    handle.stop()
    # Stopped: a segment written now was consumed by no checkpoint, so even margin 0 keeps it.
    unread = [new_event(310 + i % 3, 1 + i % 30, 3.0, ts + 100 + i, f"d-unread-{i}") for i in range(10)]
    for e in unread:
        writer.append(e)
    writer.close()
    out["unread_segment"] = segments(spool)
    out["stopped_retain"] = retain(now_cfg)
    out["stopped_left"] = segments(spool)
    # Restored from the checkpoint that knew the deleted paths: it starts, reads the unread one, which then goes.
    restarted = start_stream(cfg)
    try:
        out["restored_stats"] = restarted.wait_until_consumed(timeout=180)
        _poll("unread segment deleted", lambda: retain(now_cfg) and segments(spool), lambda left: not left, timeout=60)
        out["restored_left"] = segments(spool)
        out["restored_log"] = restarted.log_tail(20_000)
    finally:
        restarted.stop()
    out["extra_events"] = len(live) + len(unread)
    return out


def _by_user(events: list) -> dict[int, list[tuple[int, float, int]]]:
    out: dict[int, list] = {}
    for e in sorted(events, key=lambda e: e.ts):
        out.setdefault(e.user_id, []).append((e.movie_id, e.rating, e.ts))
    return out


def test_events_in_features_out(run: dict[str, Any]) -> None:
    snap, events = run["A"], run["events_A"]
    for user, evs in _by_user(events).items():
        expected = fold_user(evs, GENRES_OF, 30.0, HISTORY_LEN)
        assert snap["users"][user] == expected.to_features(), f"user {user}"
        assert snap["hist"][user] == expected.history, f"user {user}"
    assert snap["users"][1]["n_ratings"] == 29 and len(snap["hist"][1]) == HISTORY_LEN
    assert snap["users"][1]["genre_affinity"], "genres come from the published batch version"
    for movie in {e.movie_id for e in events}:
        ratings = [e.rating for e in events if e.movie_id == movie]
        got = snap["movies"][movie]
        assert got["n_ratings"] == len(ratings)
        assert got["mean_rating"] == pytest.approx(sum(ratings) / len(ratings), abs=1e-6)
    assert snap["stats"]["applied"] == len(events)
    assert snap["stats"]["duplicate"] == run["duplicates"] > 0
    # Trending after phase A: only the buckets still inside the window at the final watermark.
    assert snap["trending"] == run["trending_A_expected"]
    assert 0 < sum(snap["trending"].values()) < len(events)


def test_parity_with_the_batch_fold(run: dict[str, Any]) -> None:
    """The online user hash equals what the batch job's per-user function computes from the same events."""
    from spark_jobs.features import user_fold_fn

    events = run["events_A"]
    rows = pd.DataFrame([{"user_id": e.user_id, "movie_id": e.movie_id, "rating": e.rating, "ts": e.ts, "line": i}
                         for i, e in enumerate(sorted(events, key=lambda e: e.ts))])
    fold = user_fold_fn({m: list(g) for m, g in GENRES_OF.items()}, 30.0, HISTORY_LEN)
    for user, group in rows.groupby("user_id"):
        batch = fold(group).iloc[0]
        online = run["A"]["users"][user]
        assert online["n_ratings"] == batch["n_ratings"]
        assert online["first_ts"] == batch["first_ts"] and online["last_ts"] == batch["last_ts"]
        assert online["mean_rating"] == pytest.approx(batch["mean_rating"], abs=1e-6)
        assert online["std_rating"] == pytest.approx(batch["std_rating"], abs=1e-6)
        # Decayed values: equal up to the 6-decimal rounding of to_features (same code, same order).
        batch_aff = json.loads(batch["genre_affinity"])
        assert online["genre_affinity"].keys() == batch_aff.keys()
        assert all(online["genre_affinity"][g] == pytest.approx(v, abs=1e-6) for g, v in batch_aff.items())
        assert online["top_genres"] == list(batch["top_genres"])
        assert run["A"]["hist"][user] == [tuple(h) for h in json.loads(batch["history"])]
    assert run["A"]["users"][8]["n_ratings"] == 18  # the user written newest first


def test_malformed_events_go_to_the_dead_letters(run: dict[str, Any]) -> None:
    records = [json.loads(line) for f in run["dead_letters"] for line in f.read_text().splitlines()]
    assert sorted(r["raw"] for r in records) == sorted(BAD_LINES)
    for r in records:
        with pytest.raises(EventError) as err:
            parse_event(r["raw"])
        assert r["error"] == str(err.value)
    assert run["A"]["stats"]["malformed"] == len(BAD_LINES)
    # The good events around them were applied.
    assert run["A"]["users"][20]["n_ratings"] == 2 and run["A"]["users"][21]["n_ratings"] == 1


def test_counts_drop_when_events_leave_the_window(run: dict[str, Any]) -> None:
    assert len(run["A"]["trending"]) > 1
    assert run["B"]["trending"] == {3: 3}, "three hours later, only the new events are in the window"
    # The all-time statistics of a movie that left the window stay.
    assert any(m["n_ratings"] > 0 for m in run["A"]["movies"].values())


def test_crash_and_restart_count_every_event_once(run: dict[str, Any]) -> None:
    events, snap = run["all_events"], run["C"]
    assert 0 < run["consumed_at_kill"] < 3000, "the job was killed mid-stream, after consuming part of the burst"
    assert "restoring from" in run["log"].rsplit("reading spool", 1)[-1], "the second run resumed from a checkpoint"
    for user, evs in _by_user(events).items():
        assert snap["users"][user]["n_ratings"] == len(evs), f"user {user}"
        assert snap["users"][user] == fold_user(evs, GENRES_OF, 30.0, HISTORY_LEN).to_features(), f"user {user}"
    for movie in {e.movie_id for e in events}:
        assert snap["movies"][movie]["n_ratings"] == sum(1 for e in events if e.movie_id == movie), f"movie {movie}"
    assert snap["trending"] == run["trending_C_expected"]
    stats = run["final_stats"]
    assert stats["applied"] == len(events)
    assert stats["duplicate"] == run["duplicates"], "the restored source re-read nothing it had checkpointed"
    assert stats["malformed"] == len(BAD_LINES)


def test_consumed_segments_are_deleted_only_after_a_checkpoint_and_the_margin(run: dict[str, Any]) -> None:
    d = run["D"]
    assert len(d["before"]) > 10
    assert d["default_margin"]["segments"] == 0 and d["after_default_margin"] == d["before"], \
        "within events.retain_hours nothing consumed is deleted"
    assert d["after_margin_0"] == [], "margin 0: every segment a completed checkpoint consumed is deleted"
    assert d["counter_after_delete"] == d["stats_after_delete"]["consumed"] == run["final_stats"]["consumed"], \
        "deleted lines still count as accepted (the spool ledger)"
    assert d["live_stats"]["consumed"] == run["final_stats"]["consumed"] + 10, "the job reads on after the deletion"
    assert d["live_left"] == []
    assert len(d["unread_segment"]) == 1 and d["stopped_retain"]["segments"] == 0 and \
        d["stopped_left"] == d["unread_segment"], "a segment no checkpoint consumed stays"
    assert "restoring from" in d["restored_log"].rsplit("reading spool", 1)[-1]
    assert d["restored_stats"]["consumed"] == run["final_stats"]["consumed"] + d["extra_events"], \
        "restored after its read segments were deleted, the job read the unread one and nothing twice"
    assert d["restored_left"] == []


def test_the_jobs_online_keys_expire_after_the_configured_ttl(run: dict[str, Any]) -> None:
    ttl = run["cfg"].stream.online_ttl_hours * 3600
    assert ttl == 720 * 3600, "the default: 30 days"
    for name in ("hist", "user", "movie"):
        assert ttl - 600 <= run["ttl_A"][name] <= ttl, f"online:{name} expires {ttl} s after its last write"
    assert run["ttl_A"]["trending"] == -1 and run["ttl_A"]["stats"] == -1

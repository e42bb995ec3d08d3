"""The stream job's pure pieces: reorder buffer parity, window buckets, the Redis writer, checkpoints.

No Flink here (fast): these pin the logic the Flink operators delegate to, so a failure
in the job tests can be told apart from a failure of the logic itself.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import redis

from flink_jobs.checkpoints import latest_checkpoint, prune
from flink_jobs.online_state import OnlineMovie, OnlineUser, bucket_expiry_ms
from flink_jobs.redis_io import BufferedWriter, GenreCache
from pipeline import keys as K
from pipeline.features import fold_user
from pipeline.schemas import GENRES

GENRES_OF = {m: [GENRES[m % len(GENRES)], GENRES[(m * 7) % len(GENRES)]] for m in range(1, 60)}


def _events(n: int, seed: int) -> list[tuple[int, float, int]]:
    rng = random.Random(seed)
    ts = 1_000_000
    out = []
    for _ in range(n):
        ts += rng.choice([0, 30, 3600, 86_400 * 3])
        out.append((rng.randint(1, 59), rng.choice([1.0, 2.5, 3.0, 4.0, 5.0]), ts))
    return out


def _replay(events: list[tuple[int, float, int]], reorder: int, history_len: int = 20) -> OnlineUser:
    user = OnlineUser.empty(history_len)
    for m, r, t in events:
        user.apply(m, r, t, lambda mid: GENRES_OF.get(mid, ()), 30.0, reorder)
        user = OnlineUser.from_state(pickle.loads(pickle.dumps(user.to_state())))  # through pickled state, as in Flink
    return user


def test_in_order_events_equal_the_batch_fold_exactly() -> None:
    events = _events(120, seed=1)
    user = _replay(events, reorder=16)
    batch = fold_user(events, GENRES_OF, 30.0, 20)
    assert user.features() == batch.to_features()
    assert user.history() == batch.history
    assert user.refolds == 0


def test_late_events_within_the_buffer_are_put_back_in_time_order() -> None:
    events = [e for e in _events(80, seed=2)]
    events = sorted(set(events), key=lambda e: e[2])  # distinct timestamps: the time order is unambiguous
    events = [e for i, e in enumerate(events) if i == 0 or e[2] != events[i - 1][2]]
    shuffled = events[:]
    rng = random.Random(3)
    for i in range(0, len(shuffled) - 8, 8):  # shuffle within blocks of 8: every event at most 7 late
        block = shuffled[i:i + 8]
        rng.shuffle(block)
        shuffled[i:i + 8] = block
    user = _replay(shuffled, reorder=8)
    batch = fold_user(events, GENRES_OF, 30.0, 20)
    assert user.refolds > 0
    assert user.features() == batch.to_features()
    assert user.history() == batch.history


def test_events_later_than_the_buffer_are_counted_but_approximate() -> None:
    events = [(m, r, 1_000_000 + i * 3600) for i, (m, r, _) in enumerate(_events(30, seed=4))]
    user = _replay(list(reversed(events)), reorder=4)
    feats = user.features()
    assert feats["n_ratings"] == 30 and feats["first_ts"] == events[0][2] and feats["last_ts"] == events[-1][2]


def test_movie_window_counts_and_expiry() -> None:
    slide, window = 300, 3600
    movie = OnlineMovie()
    t0 = 1_000_200
    timers = [movie.apply(4.0, t0 + i * 60, slide, window, watermark_ms=-(2 ** 63)) for i in range(5)]
    assert movie.trending() == 5 and movie.count == 5 and movie.mean == 4.0
    assert all(t is not None for t in timers)
    # A watermark past the last bucket's expiry empties the window; the all-time stats stay.
    movie.expire(max(timers), slide, window)
    assert movie.trending() == 0 and movie.count == 5
    # An event whose bucket already left the window counts for the mean only.
    late = movie.apply(2.0, t0, slide, window, watermark_ms=max(timers))
    assert late is None and movie.trending() == 0 and movie.count == 6
    assert OnlineMovie.from_state(pickle.loads(pickle.dumps(movie.to_state()))) == movie
    assert bucket_expiry_ms(0, slide, window) == (slide + window) * 1000


@pytest.mark.redis
def test_buffered_writer_coalesces_and_removes_zero_scores(redis_client: redis.Redis) -> None:
    keys = K.Keys("tw")
    w = BufferedWriter(redis_client, batch=100)
    w.set(keys.online_history(1), "[1]")
    w.set(keys.online_history(1), "[2]")  # last write wins
    w.zscore(keys.trending(), "7", 3)
    w.hset_field(keys.stream_stats(), "applied:0", "5")
    w.hset_field(keys.stream_stats(), "applied:1", "6")
    assert len(w) == 4 and redis_client.get(keys.online_history(1)) is None
    w.flush()
    assert redis_client.get(keys.online_history(1)) == b"[2]"
    assert redis_client.zscore(keys.trending(), "7") == 3
    assert redis_client.hgetall(keys.stream_stats()) == {b"applied:0": b"5", b"applied:1": b"6"}
    w.zscore(keys.trending(), "7", 0)
    w.flush()
    assert redis_client.zcard(keys.trending()) == 0
    small = BufferedWriter(redis_client, batch=2)
    small.set("tw:a", "1")
    small.set("tw:b", "1")  # the batch size flushes by itself
    assert len(small) == 0 and redis_client.get("tw:b") == b"1"


@pytest.mark.redis
def test_online_keys_expire_from_their_last_write_in_the_same_round_trip(redis_client: redis.Redis,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    keys = K.Keys("tttl")
    ttl = 720 * 3600  # the default stream.online_ttl_hours
    redis_client.ping()  # the connection's own handshake is not a write round trip
    sends: list[int] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the real one, counted
        sends.append(1)
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    w = BufferedWriter(redis_client, batch=100, ttl_s=ttl)
    w.set(keys.online_history(1), "[1]")
    w.hset(keys.online_user(1), {"n_ratings": "1"})
    w.hset(keys.online_movie(5), lambda: {"n_ratings": "1"})  # a lazy value: encoded at flush
    w.zscore(keys.trending(), "5", 1)
    w.hset_field(keys.stream_stats(), "applied:0", "1")
    w.flush()
    assert sends == [1], "one round trip for the 5 writes and their expiries"
    for key in (keys.online_history(1), keys.online_user(1), keys.online_movie(5)):
        assert ttl - 5 <= redis_client.ttl(key) <= ttl, key
    assert redis_client.ttl(keys.trending()) == -1 and redis_client.ttl(keys.stream_stats()) == -1, \
        "trending (bounded by its window) and the progress counters never expire"
    redis_client.expire(keys.online_user(1), 10)
    w.hset(keys.online_user(1), {"n_ratings": "2"})  # a new write refreshes the expiry
    w.flush()
    assert redis_client.ttl(keys.online_user(1)) > ttl - 5
    never = BufferedWriter(redis_client, batch=100, ttl_s=0)
    never.set(keys.online_history(2), "[1]")
    never.hset(keys.online_user(2), {"n_ratings": "1"})
    never.flush()
    assert redis_client.ttl(keys.online_history(2)) == -1 and redis_client.ttl(keys.online_user(2)) == -1


@pytest.mark.redis
def test_genre_cache_reads_the_published_version(redis_client: redis.Redis) -> None:
    keys = K.Keys("tg")
    cache = GenreCache(redis_client, keys)
    assert tuple(cache(1)) == ()  # nothing published: no genres, no error
    redis_client.set(keys.movie_ids("v1"), "[1]")
    redis_client.hset(keys.movie("v1", 1), "genres", '["Drama"]')
    redis_client.hset(keys.movie("v1", 5), "genres", '["Comedy"]')  # listed elsewhere: looked up once
    redis_client.set(keys.current(), "v1")
    cache._checked = 0.0  # force the periodic version check
    cache.recheck_s = 0.0
    assert tuple(cache(1)) == ("Drama",) and tuple(cache(5)) == ("Comedy",) and tuple(cache(9)) == ()


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    import os

    old = tmp_path / "job-a" / "chk-7"
    new = tmp_path / "job-b" / "chk-2"
    incomplete = tmp_path / "job-b" / "chk-3"
    for d in (old, new, incomplete):
        d.mkdir(parents=True)
        (d.parent / "shared").mkdir(exist_ok=True)
    (old / "_metadata").write_text("x")
    (new / "_metadata").write_text("x")
    os.utime(old / "_metadata", (1, 1))
    assert latest_checkpoint(tmp_path) == new
    assert prune(tmp_path, keep=new) == [tmp_path / "job-a"]
    assert latest_checkpoint(tmp_path) == new
    assert latest_checkpoint(tmp_path / "missing") is None


def test_kafka_without_the_connector_jar_fails_at_start_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from flink_jobs.rating_features import StreamSetupError, check_setup
    from recsys.cli import main
    from tests.conftest import make_config

    cfg = make_config(tmp_path, events={"log": "kafka", "kafka_bootstrap": "127.0.0.1:9092"})
    with pytest.raises(StreamSetupError) as err:
        check_setup(cfg)
    for words in ("flink-sql-connector-kafka", "Flink 2.x", "stream.kafka_jar", "RECSYS_STREAM_KAFKA_JAR"):
        assert words in str(err.value)
    with pytest.raises(StreamSetupError, match="does not exist"):
        check_setup(cfg.replace("stream", kafka_jar=str(tmp_path / "missing.jar")))
    (tmp_path / "connector.jar").write_bytes(b"")
    with pytest.raises(StreamSetupError, match="'[^']*clients.jar', which does not exist") as err:
        # the thin connector plus kafka-clients, comma-separated: the missing one is named, the present one not
        check_setup(cfg.replace("stream", kafka_jar=f"{tmp_path / 'connector.jar'}, {tmp_path / 'clients.jar'}"))
    assert "connector.jar" not in str(err.value)
    check_setup(cfg.replace("stream", kafka_jar=str(tmp_path / "connector.jar")))  # present: no error
    (tmp_path / "recsys.toml").write_text('[events]\nlog = "kafka"\nkafka_bootstrap = "h:9092"\n')
    assert main(["--home", str(tmp_path), "stream", "--max-seconds", "1"]) == 2
    assert "flink-sql-connector-kafka" in capsys.readouterr().err
    assert not (tmp_path / "redis").exists(), "nothing was started"


def test_spool_counter_counts_accepted_events_before_the_segment_rolls(tmp_path: Path) -> None:
    from flink_jobs.control import SpoolCounter
    from pipeline.events import SpoolWriter, new_event

    writer = SpoolWriter(tmp_path, roll_seconds=3600, roll_events=3)
    count = SpoolCounter(tmp_path)
    assert count() == 0
    writer.append(new_event(1, 2, 4.0, 10))
    assert count() == 1, "an accepted event in the open segment counts"
    for _ in range(3):
        writer.append(new_event(1, 2, 4.0, 10))  # rolls after the third line
    assert count() == 4
    (tmp_path / "events-0000000000000-x-1.jsonl").write_text('{"a":1}\n\n  \nnot json\n')
    assert count() == 6, "blank lines are not events (the job skips them too)"
    writer.close()
    assert count() == 6


class _FakeTimers:
    """Records the timers a function registers (the real ones are exercised by tests/test_stream_job.py)."""

    def __init__(self) -> None:
        self.registered: list[int] = []

    def register_processing_time_timer(self, t: int) -> None:
        self.registered.append(t)


class _FakeCtx:
    def __init__(self) -> None:
        self.timers = _FakeTimers()

    def timer_service(self) -> _FakeTimers:
        return self.timers


class _FakeWriter:
    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> int:
        self.flushes += 1
        return 0


def _publisher():  # noqa: ANN202 - a _Publisher without Flink or Redis
    from flink_jobs.operators import JobSettings, _Publisher

    pub = _Publisher()
    pub.settings = JobSettings(redis_url="", key_prefix="t", history_len=5, half_life_days=1.0, reorder_events=1,
                               trending_window_s=60, trending_slide_s=10, sink_batch=10, dedup_ttl_hours=1,
                               publish_ms=200)
    pub.writer, pub.pending, pub.last_tick, pub.touched = _FakeWriter(), {}, -1, set()
    return pub


def test_publish_timers_flush_once_a_tick_and_keep_unflushed_shards_scheduled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bookkeeping exactly-once rests on (operators._Publisher): one timer per shard and tick, one flush at
    the tick's first callback, and a shard stays scheduled while a write of it may still be buffered."""
    import flink_jobs.operators as ops

    clock = [1_000.05]
    monkeypatch.setattr(ops.time, "time", lambda: clock[0])
    pub, ctx = _publisher(), _FakeCtx()
    pub._schedule(3, ctx)
    pub._schedule(3, ctx)  # the same tick: one timer
    pub._schedule(5, ctx)
    tick = pub.pending[3]
    assert ctx.timers.registered == [tick, tick] and tick % 200 == 0 and pub.pending == {3: tick, 5: tick}
    pub._published(tick, 3, ctx)  # the tick's first callback flushes everything buffered before it
    pub._published(tick, 5, ctx)  # ... the second does not flush again
    assert pub.writer.flushes == 1 and pub.pending == {}
    clock[0] += 0.2
    pub._schedule(5, ctx)
    later = pub.pending[5]
    assert later == tick + 200
    pub._published(later, 5, ctx)
    pub._schedule(3, ctx)
    pub._published(later, 3, ctx, wrote=True)  # wrote after this tick's flush: scheduled again
    assert pub.writer.flushes == 2 and 3 in pub.pending
    pub.pending.clear()
    pub._published(later + 200, 7, ctx)  # a timer restored from a checkpoint: not this attempt's
    assert 7 in pub.pending, "a restored timer keeps its shard scheduled until the republished writes are flushed"

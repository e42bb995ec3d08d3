"""The stream job's Flink functions: parse, per-user features, per-movie statistics, progress.

Each function is small and delegates the feature logic to ``pipeline.features`` (through
``flink_jobs.online_state``) and the writes to ``flink_jobs.redis_io``. Settings arrive as
a plain ``JobSettings`` (picklable, no Config object inside the Python workers).

Records between operators are tuples (Flink's tuple coder is much cheaper than pickling):

- event:  (event_id, user_id, movie_id, rating, ts)
- stat:   (shard, counter) with counter in ``pipeline.keys.STREAM_COUNTERS``
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from pipeline import keys as K

EVENT_TYPE = Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG(), Types.DOUBLE(), Types.LONG()])
STAT_TYPE = Types.TUPLE([Types.INT(), Types.STRING()])
STAT_SHARDS = 8  # progress counters are keyed by shard so they scale out with the job

DEAD_LETTER = OutputTag("dead-letter", Types.STRING())
STATS = OutputTag("stats", STAT_TYPE)


@dataclass(frozen=True)
class JobSettings:
    """What the Python workers need from the configuration (plain values, picklable)."""

    redis_url: str
    key_prefix: str
    history_len: int
    half_life_days: float
    reorder_events: int
    trending_window_s: int
    trending_slide_s: int
    sink_batch: int
    dedup_ttl_hours: int
    online_ttl_s: int = 0  # expiry of online:hist/user/movie, refreshed by each write (0 = none)
    progress: bool = False  # StreamStats reports progress records (spool source: flink_jobs.progress)


def shard_of(value: Any) -> int:
    return zlib.crc32(str(value).encode()) % STAT_SHARDS


class _RedisFunction:
    """Mixin: a Redis client, a buffered writer flushed at bundle end, and the key builder."""

    settings: JobSettings

    def _open_redis(self, ctx: RuntimeContext) -> None:
        import redis

        from flink_jobs.redis_io import BufferedWriter

        self.keys = K.Keys(self.settings.key_prefix)
        self.client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=30)
        self.writer = BufferedWriter(self.client, self.settings.sink_batch, self.settings.online_ttl_s)
        # PyFlink evaluates gauges when it finishes a bundle (every python.fn-execution.bundle.time
        # ms, and before every checkpoint barrier): the flush rides on that hook.
        ctx.get_metrics_group().gauge("redisWritesFlushed", self.writer.flush)

    def close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.flush()
            self.client.close()


class ParseEvents(ProcessFunction):
    """Raw line -> event tuple; a malformed line goes to the dead letters with its reason."""

    def open(self, ctx: RuntimeContext) -> None:
        self.malformed = ctx.get_metrics_group().counter("malformedEvents")
        self.parsed = ctx.get_metrics_group().counter("parsedEvents")

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterable[Any]:
        from pipeline.events import EventError, dead_letter_line, parse_event

        if not value.strip():
            return  # blank lines are not events (read_spool skips them too)
        try:
            e = parse_event(value)
        except Exception as exc:  # noqa: BLE001 - any bad line is a dead letter, never a job failure
            self.malformed.inc()
            reason = str(exc) if isinstance(exc, EventError) else f"unparseable line: {type(exc).__name__}"
            yield DEAD_LETTER, dead_letter_line(value, reason)
            yield STATS, (shard_of(value), "malformed")
            return
        self.parsed.inc()
        yield e.event_id, e.user_id, e.movie_id, e.rating, e.ts


class UserFeatures(KeyedProcessFunction, _RedisFunction):
    """Keyed by user: drop event ids seen within ``dedup_ttl_hours``, apply ``UserState.update``, write online:hist and online:user."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        from flink_jobs.redis_io import GenreCache

        # One JSON value per user holds features, reorder buffer and seen event ids: one state
        # read per event (each state read of an uncached key is a blocking trip to the JVM).
        self.state = ctx.get_state(ValueStateDescriptor("user", Types.STRING()))
        self._open_redis(ctx)
        self.genres = GenreCache(self.client, self.keys)
        metrics = ctx.get_metrics_group()
        self.applied, self.duplicates = metrics.counter("appliedEvents"), metrics.counter("duplicateEvents")
        self.late = metrics.counter("reorderedEvents")

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        from flink_jobs.online_state import OnlineUser

        event_id, user_id, movie_id, rating, ts = e
        raw = self.state.value()
        user = OnlineUser.from_json(raw) if raw else OnlineUser.empty(self.settings.history_len)
        if user.seen.check_and_add(event_id, time.time(), self.settings.dedup_ttl_hours * 3600.0):
            self.duplicates.inc()
            yield STATS, (shard_of(user_id), "duplicate")
            return
        if user.apply(movie_id, rating, ts, self.genres, self.settings.half_life_days, self.settings.reorder_events):
            self.late.inc()
        self.state.update(user.to_json())
        self.writer.set(self.keys.online_history(user_id), K.encode_history(user.history()))
        self.writer.hset(self.keys.online_user(user_id), K.encode_fields(user.features()))
        self.applied.inc()
        yield STATS, (shard_of(user_id), "applied")
        yield e


class MovieStats(KeyedProcessFunction, _RedisFunction):
    """Keyed by movie: running mean and event-time sliding-window counts -> online:movie, trending."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        self.state = ctx.get_state(ValueStateDescriptor("movie", Types.STRING()))
        self._open_redis(ctx)

    def _publish(self, movie_id: int, movie: Any) -> None:
        self.writer.hset(self.keys.online_movie(movie_id), K.encode_fields(movie.features()))
        self.writer.zscore(self.keys.trending(), str(movie_id), movie.trending())

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        from flink_jobs.online_state import OnlineMovie

        _, _, movie_id, rating, ts = e
        raw = self.state.value()
        movie = OnlineMovie.from_json(raw) if raw else OnlineMovie()
        s = self.settings
        expiry = movie.apply(rating, ts, s.trending_slide_s, s.trending_window_s, ctx.timer_service().current_watermark())
        if expiry is not None:
            ctx.timer_service().register_event_time_timer(expiry)
        self.state.update(movie.to_json())
        self._publish(movie_id, movie)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        from flink_jobs.online_state import OnlineMovie

        raw = self.state.value()
        if not raw:
            return []
        movie = OnlineMovie.from_json(raw)
        movie.expire(timestamp, self.settings.trending_slide_s, self.settings.trending_window_s)
        self.state.update(movie.to_json())
        self._publish(ctx.get_current_key(), movie)
        return []


class StreamStats(KeyedProcessFunction, _RedisFunction):
    """Keyed by shard: absolute progress counters -> the online:stats hash (what wait_until_consumed polls),
    and once a second per shard a progress record for the checkpoint-committed progress sink."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        self.counts = ctx.get_state(ValueStateDescriptor("counts", Types.STRING()))
        self._open_redis(ctx)

    def process_element(self, stat: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        from flink_jobs.progress import PROGRESS_EVERY_MS

        shard, counter = stat
        raw = self.counts.value()
        counts = json.loads(raw) if raw else {}
        counts[counter] = counts.get(counter, 0) + 1
        self.counts.update(json.dumps(counts))
        self.writer.hset_field(self.keys.stream_stats(), K.stream_stat_field(counter, shard), str(counts[counter]))
        if self.settings.progress:
            # One timer per shard and second (Flink keeps one per key and timestamp): the progress report.
            now = ctx.timer_service().current_processing_time()
            ctx.timer_service().register_processing_time_timer((now // PROGRESS_EVERY_MS + 1) * PROGRESS_EVERY_MS)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        """Report the shard's counted lines with the wall time they were read at (flink_jobs.progress says why)."""
        from flink_jobs.progress import progress_record

        raw = self.counts.value()
        if raw:
            yield progress_record(ctx.get_current_key(), sum(json.loads(raw).values()), time.time())

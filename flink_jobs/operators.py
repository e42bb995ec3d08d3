"""The stream job's Flink functions: parse, per-user features, per-movie statistics, progress.

Each function is small and delegates the feature logic to ``pipeline.features`` (through
``flink_jobs.online_state``) and the writes to ``flink_jobs.redis_io``. Settings arrive as
a plain ``JobSettings`` (picklable, no Config object inside the Python workers).

The functions run in PyFlink's *thread mode* (inside the TaskManager's JVM, no Beam
round trips): measured on 2 cores, a keyed function with state runs about 10x faster than
in process mode. What thread mode lacks is the bundle-end hook process mode has before
each checkpoint barrier, which this job used to flush its Redis buffers; ``Publisher``
replaces it with processing-time timers (its docstring gives the argument).

Per event a keyed function does: a dict lookup of the key's decoded state (``cache``; Flink's
state is read only on a miss, i.e. after a restore), the feature update, one state write of
plain tuples (pickled by Flink), and a *lazy* Redis write (encoded at flush, once per key).

Records between operators are tuples (Flink's tuple coder is much cheaper than pickling):

- event:  (event_id, user_id, movie_id, rating, ts)
- stat:   (shard, counter, n): n more lines counted as counter (``pipeline.keys.STREAM_COUNTERS``)
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import ValueStateDescriptor

from pipeline import keys as K

EVENT_TYPE = Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG(), Types.DOUBLE(), Types.LONG()])
STAT_TYPE = Types.TUPLE([Types.INT(), Types.STRING(), Types.LONG()])
# What the functions emit is already keyed for the next one, Row(key, value) (rating_features._keyed):
USER_KEYED_TYPE = Types.ROW([Types.LONG(), EVENT_TYPE])
MOVIE_KEYED_TYPE = Types.ROW([Types.LONG(), EVENT_TYPE])
STAT_KEYED_TYPE = Types.ROW([Types.INT(), STAT_TYPE])
TIMED_EVENT_TYPE = Types.TUPLE([USER_KEYED_TYPE, Types.LONG()])  # (row, event time ms): the timestamp assigner reads [1]
STAT_SHARDS = 8  # progress counters are keyed by shard so they scale out with the job
WATERMARK_EVERY = 256  # MovieStats reads the current watermark once per this many events

DEAD_LETTER = OutputTag("dead-letter", Types.STRING())
STATS = OutputTag("stats", STAT_KEYED_TYPE)


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
    publish_ms: int = 200  # processing-time tick of the Redis flushes (Publisher)
    cache_keys: int = 200_000  # decoded states kept per function (a miss reads Flink's state)


def shard_of(value: Any) -> int:
    return zlib.crc32(str(value).encode()) % STAT_SHARDS


def _stat(shard: int, counter: str, n: int) -> Row:
    return Row(shard, (shard, counter, n))


class _RedisFunction:
    """Mixin: a Redis client, a buffered writer, the key builder, and the publish timers.

    **Why a write is never lost, without a bundle hook.** Every event that buffers a write for
    key k makes sure k has a processing-time timer at the next tick (``_schedule``: one per key
    and tick, remembered in ``pending``). The first timer callback of each tick flushes the whole
    buffer (``_published``). Flink fires all timers due at a tick in one mailbox action, so no
    checkpoint barrier falls inside it, and timers are part of the keyed state a checkpoint holds.
    Take any checkpoint C. A write buffered before C's barrier was either flushed before it (the
    tick came first), or its key's timer is still pending and is in C. After a restore from C
    the buffer is empty, but that timer fires again (at once: it is in the past); ``pending``
    does not know it, so ``_published`` answers False and the function republishes the key from
    its restored state. So everything C's state implies is in Redis after a restore from C, and
    writes are absolute values (see ``flink_jobs.redis_io``): repeating one is harmless.
    """

    settings: JobSettings

    def _open_redis(self, ctx: RuntimeContext) -> None:
        import redis

        from flink_jobs.redis_io import BufferedWriter

        self.keys = K.Keys(self.settings.key_prefix)
        self.client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=30)
        self.writer = BufferedWriter(self.client, self.settings.sink_batch, self.settings.online_ttl_s)
        ctx.get_metrics_group().gauge("redisWritesFlushed", lambda: self.writer.flushed)
        self.pending: dict[Any, int] = {}
        self.last_tick = -1
        self.cache: dict[Any, Any] = {}

    def _remember(self, key: Any, value: Any) -> Any:
        """Keep ``value`` as the key's decoded state (oldest entries dropped past ``cache_keys``)."""
        cache = self.cache
        if key not in cache and len(cache) >= self.settings.cache_keys:
            for old in list(cache)[: max(1, len(cache) // 8)]:
                del cache[old]
        cache[key] = value
        return value

    def _schedule(self, key: Any, ctx: Any) -> None:
        """Make sure ``key`` has a publish timer at the next tick (see the class docstring)."""
        if key in self.pending:
            return
        tick_ms = self.settings.publish_ms
        # Python's clock is the processing-time service's (System.currentTimeMillis), without a JVM call.
        tick = (int(time.time() * 1000) // tick_ms + 1) * tick_ms
        ctx.timer_service().register_processing_time_timer(tick)
        self.pending[key] = tick

    def _published(self, timestamp: int, key: Any) -> bool:
        """At a publish timer: flush once per tick; True when the key's writes were this attempt's
        (now in Redis), False for a timer restored from a checkpoint (republish the key)."""
        if timestamp > self.last_tick:
            self.writer.flush()
            self.last_tick = timestamp
        if self.pending.get(key) == timestamp:
            del self.pending[key]
            return True
        return False

    def close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.flush()
            self.client.close()


class ParseEvents(ProcessFunction):
    """Raw line -> (event tuple, event time ms); a malformed line goes to the dead letters with its reason."""

    def open(self, ctx: RuntimeContext) -> None:
        self.malformed = ctx.get_metrics_group().counter("malformedEvents")
        self.parsed = 0  # a gauge, not a counter: Counter.inc is a JVM call per event
        ctx.get_metrics_group().gauge("parsedEvents", lambda: self.parsed)

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
            yield STATS, _stat(shard_of(value), "malformed", 1)
            return
        self.parsed += 1
        yield Row(e.user_id, (e.event_id, e.user_id, e.movie_id, e.rating, e.ts)), e.ts * 1000


class UserFeatures(KeyedProcessFunction, _RedisFunction):
    """Keyed by user: drop event ids seen within ``dedup_ttl_hours``, apply ``UserState.update``, write online:hist
    and online:user; the user's newly counted lines go to ``StreamStats`` at its publish timer."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        from flink_jobs.redis_io import GenreCache

        # One value per user: (OnlineUser.to_state(), applied and duplicate lines not yet reported).
        self.state = ctx.get_state(ValueStateDescriptor("user-v2", Types.PICKLED_BYTE_ARRAY()))
        self._open_redis(ctx)
        self.genres = GenreCache(self.client, self.keys)
        self.counted = {"appliedEvents": 0, "duplicateEvents": 0, "reorderedEvents": 0}
        for name in self.counted:  # gauges of plain ints (Counter.inc would be a JVM call per event)
            ctx.get_metrics_group().gauge(name, lambda name=name: self.counted[name])

    def _load(self, user_id: int) -> list:
        """[OnlineUser, applied, duplicate] of the current key: from the cache, else from Flink's state."""
        got = self.cache.get(user_id)
        if got is None:
            from flink_jobs.online_state import OnlineUser

            raw = self.state.value()
            got = ([OnlineUser.from_state(raw[0]), raw[1], raw[2]] if raw
                   else [OnlineUser.empty(self.settings.history_len), 0, 0])
            self._remember(user_id, got)
        return got

    def _save(self, got: list) -> None:
        self.state.update((got[0].to_state(), got[1], got[2]))

    def _publish(self, user_id: int, user: Any) -> None:
        self.writer.set(self.keys.online_history(user_id), lambda: K.encode_history(user.history()))
        self.writer.hset(self.keys.online_user(user_id), lambda: K.encode_fields(user.features()))

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        event_id, user_id, movie_id, rating, ts = e
        got = self._load(user_id)
        user = got[0]
        if user.seen.check_and_add(event_id, time.time(), self.settings.dedup_ttl_hours * 3600.0):
            self.counted["duplicateEvents"] += 1
            got[2] += 1
            self._save(got)
            self._schedule(user_id, ctx)
            return
        if user.apply(movie_id, rating, ts, self.genres, self.settings.half_life_days, self.settings.reorder_events):
            self.counted["reorderedEvents"] += 1
        got[1] += 1
        self._save(got)
        self._publish(user_id, user)
        self._schedule(user_id, ctx)
        self.counted["appliedEvents"] += 1
        yield Row(movie_id, e)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        user_id = ctx.get_current_key()
        got = self._load(user_id)
        if not self._published(timestamp, user_id):
            self._publish(user_id, got[0])
            self._schedule(user_id, ctx)
        if got[1] or got[2]:
            shard = shard_of(user_id)
            if got[1]:
                yield STATS, _stat(shard, "applied", got[1])
            if got[2]:
                yield STATS, _stat(shard, "duplicate", got[2])
            got[1] = got[2] = 0
            self._save(got)


class MovieStats(KeyedProcessFunction, _RedisFunction):
    """Keyed by movie: running mean and event-time sliding-window counts -> online:movie, trending."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        self.state = ctx.get_state(ValueStateDescriptor("movie-v2", Types.PICKLED_BYTE_ARRAY()))
        self._open_redis(ctx)
        self.watermark, self.until_watermark = -(2 ** 63), 0

    def _load(self, movie_id: int) -> Any:
        movie = self.cache.get(movie_id)
        if movie is None:
            from flink_jobs.online_state import OnlineMovie

            raw = self.state.value()
            movie = self._remember(movie_id, OnlineMovie.from_state(raw) if raw else OnlineMovie())
        return movie

    def _publish(self, movie_id: int, movie: Any, ctx: Any) -> None:
        self.writer.hset(self.keys.online_movie(movie_id), lambda: K.encode_fields(movie.features()))
        self.writer.zscore(self.keys.trending(), str(movie_id), movie.trending)
        self._schedule(movie_id, ctx)

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        _, _, movie_id, rating, ts = e
        movie = self._load(movie_id)
        s = self.settings
        timers = ctx.timer_service()
        self.until_watermark -= 1
        if self.until_watermark <= 0:
            # Read every WATERMARK_EVERY events (a JVM call). A stale, lower watermark can only let an
            # event into a bucket that just expired; its timer is then already due and removes it.
            self.watermark, self.until_watermark = timers.current_watermark(), WATERMARK_EVERY
        known = len(movie.buckets)
        expiry = movie.apply(rating, ts, s.trending_slide_s, s.trending_window_s, self.watermark)
        if expiry is not None and len(movie.buckets) > known:  # a new bucket: its expiry timer (one per bucket)
            timers.register_event_time_timer(expiry)
        self.state.update(movie.to_state())
        self._publish(movie_id, movie, ctx)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        movie_id = ctx.get_current_key()
        movie = self._load(movie_id)
        if ctx.time_domain() == TimeDomain.EVENT_TIME:  # a bucket left the window
            self.watermark = max(self.watermark, timestamp)
            movie.expire(timestamp, self.settings.trending_slide_s, self.settings.trending_window_s)
            self.state.update(movie.to_state())
            self._publish(movie_id, movie, ctx)
        elif not self._published(timestamp, movie_id):
            self._publish(movie_id, movie, ctx)
        return []


class StreamStats(KeyedProcessFunction, _RedisFunction):
    """Keyed by shard: absolute progress counters -> the online:stats hash (what wait_until_consumed polls),
    and at most once a second per shard a progress record for the checkpoint-committed progress sink."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        self.counts = ctx.get_state(ValueStateDescriptor("counts-v2", Types.PICKLED_BYTE_ARRAY()))
        self._open_redis(ctx)
        self.reported: dict[int, tuple[int, int]] = {}  # shard -> (second, count) of its last progress record

    def _load(self, shard: int) -> dict[str, int]:
        counts = self.cache.get(shard)
        if counts is None:
            raw = self.counts.value()
            counts = self._remember(shard, dict(raw) if raw else {})
        return counts

    def _publish(self, shard: int, counts: dict[str, int], counter: str) -> None:
        self.writer.hset_field(self.keys.stream_stats(), K.stream_stat_field(counter, shard),
                               lambda: str(counts[counter]))

    def process_element(self, stat: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        shard, counter, n = stat
        counts = self._load(shard)
        counts[counter] = counts.get(counter, 0) + n
        self.counts.update(tuple(counts.items()))
        self._publish(shard, counts, counter)
        self._schedule(shard, ctx)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        """Publish; and report the shard's counted lines with the wall time they were read at
        (flink_jobs.progress says why)."""
        from flink_jobs.progress import PROGRESS_EVERY_MS, progress_record

        shard = ctx.get_current_key()
        counts = self._load(shard)
        if not self._published(timestamp, shard):
            for counter in counts:
                self._publish(shard, counts, counter)
            self._schedule(shard, ctx)
        total = sum(counts.values())
        if not self.settings.progress or total == self.reported.get(shard, (-1, 0))[1]:
            return
        second = timestamp // PROGRESS_EVERY_MS
        if self.reported.get(shard, (-1, 0))[0] != second:
            self.reported[shard] = (second, total)
            yield progress_record(shard, total, time.time())
        else:  # reported this second already: once more at the next second, with the count then
            ctx.timer_service().register_processing_time_timer((second + 1) * PROGRESS_EVERY_MS)

"""The stream job's Flink functions: parse, per-user features, per-movie statistics, progress.

Each function is small and delegates the feature logic to ``pipeline.features`` (through
``flink_jobs.online_state``) and the writes to ``flink_jobs.redis_io``. Settings arrive as
a plain ``JobSettings`` (picklable, no Config object inside the Python workers).

**Why it is built this way (throughput on 2 cores, measured: flink_jobs/README.md).**

- The functions run in PyFlink's *thread mode*, inside the TaskManager's JVM: a keyed function
  with state runs about 10x faster than in process mode (Beam round trips). All Python shares
  one interpreter lock, so what counts is Python work per event, and it is kept small:
- The keyed functions are keyed by *shard* (``user_id % SHARDS``, ``movie_id % SHARDS``), with
  one ``MapState`` entry per user or movie. A keyed function's timers are per key, and thread
  mode has no bundle-end hook before checkpoint barriers (process mode's hook is what this job
  used to flush Redis), so the flush is tied to a processing-time timer per key and tick
  (``_Publisher``); per shard that is at most ``SHARDS`` timers a tick instead of one per
  dirty user.
- Each event costs a dict lookup of the decoded state (``cache``), the feature update, one
  ``MapState.put`` of plain tuples (pickled by Flink) and *lazy* Redis writes, encoded at the
  flush once per dirty key. The functions emit rows already keyed for the next one
  (``Row(key, value)``, so no Python ``key_by`` operator runs), and counters are plain ints
  behind gauges (``Counter.inc`` is a JVM call).
- Progress counts live in the user shards' state (each user entry counts its lines; a shard's
  total is their sum) and are written as absolute values at the publish tick, with the
  progress records of ``flink_jobs.progress``: no record per event, no stats operator.

Records between operators (Flink's tuple coder is much cheaper than pickling):

- event:  (event_id, user_id, movie_id, rating, ts); ``malformed_marker(shard)`` stands for one
  dead-lettered line (user 0, which no valid event has), so that the line is counted by a shard.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext, TimeDomain
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from pipeline import keys as K

EVENT_TYPE = Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG(), Types.DOUBLE(), Types.LONG()])
# What the functions emit is already keyed for the next one, Row(shard, event) (rating_features._keyed):
KEYED_EVENT_TYPE = Types.ROW([Types.INT(), EVENT_TYPE])
TIMED_EVENT_TYPE = Types.TUPLE([KEYED_EVENT_TYPE, Types.LONG()])  # (row, event time ms): the timestamp assigner reads [1]
SHARDS = 128  # keys of both keyed functions; Flink's default max parallelism, so any parallelism up to it spreads them
WATERMARK_EVERY = 256  # MovieStats reads the current watermark once per this many events

DEAD_LETTER = OutputTag("dead-letter", Types.STRING())
PROGRESS = OutputTag("progress", Types.STRING())


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
    progress: bool = False  # UserFeatures reports progress records (spool source: flink_jobs.progress)
    publish_ms: int = 200  # processing-time tick of the Redis flushes (_Publisher)
    cache_keys: int = 200_000  # decoded user states kept (a miss reads Flink's state)


def shard_of(value: Any) -> int:
    """The shard of a line that has no valid user (a malformed one)."""
    return zlib.crc32(str(value).encode()) % SHARDS


def malformed_marker(shard: int) -> tuple:
    return ("", 0, int(shard), 0.0, 0)


class _Publisher:
    """Mixin: a Redis client, a buffered writer, the key builder, and the publish timers.

    **Why a write is never lost, without a bundle hook.** Every write buffered for shard s comes
    with a processing-time timer for s at the next tick (``_schedule``: one per shard and tick,
    remembered in ``pending``). The first timer callback of each tick flushes the whole buffer
    (``_published``). Flink fires all timers due at a tick in one mailbox action, so no checkpoint
    barrier falls inside it, and timers are part of the keyed state a checkpoint holds. Take any
    checkpoint C: a write buffered before C's barrier was either flushed before it (its tick came
    first), or its shard's timer is pending and in C. After a restore from C the buffer is empty,
    and the first time a shard is touched in the new attempt (an event, or that restored timer
    firing at once) every entry of the shard is republished from the restored state
    (``_first_touch``). So everything C's state implies reaches Redis after a restore from C; and
    writes are absolute values (see ``flink_jobs.redis_io``): repeating one is harmless. The cost
    of a restore is one republish of the shards that are touched again.
    """

    settings: JobSettings

    def _open_publisher(self, ctx: RuntimeContext) -> None:
        import redis

        from flink_jobs.redis_io import BufferedWriter

        self.keys = K.Keys(self.settings.key_prefix)
        self.client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=30)
        self.writer = BufferedWriter(self.client, self.settings.sink_batch, self.settings.online_ttl_s)
        ctx.get_metrics_group().gauge("redisWritesFlushed", lambda: self.writer.flushed)
        self.pending: dict[int, int] = {}  # shard -> tick of its publish timer (this attempt)
        self.last_tick = -1
        self.touched: set[int] = set()  # shards seen in this attempt (the others get _first_touch)

    def _touch(self, shard: int, ctx: Any) -> None:
        if shard not in self.touched:
            self.touched.add(shard)
            self._first_touch(shard)
            self._schedule(shard, ctx)

    def _first_touch(self, shard: int) -> None:
        """Load what the shard's restored state implies and buffer all of its writes."""
        raise NotImplementedError

    def _schedule(self, shard: int, ctx: Any) -> None:
        """Make sure ``shard`` has a publish timer at the next tick (see the class docstring)."""
        if shard in self.pending:
            return
        tick_ms = self.settings.publish_ms
        # Python's clock is the processing-time service's (System.currentTimeMillis), without a JVM call.
        tick = (int(time.time() * 1000) // tick_ms + 1) * tick_ms
        ctx.timer_service().register_processing_time_timer(tick)
        self.pending[shard] = tick

    def _published(self, timestamp: int, shard: int, ctx: Any, wrote: bool = False) -> None:
        """At a publish timer: flush once per tick (at its first timer callback). The shard stays scheduled
        when its writes may not be in Redis yet: the timer is not this attempt's (restored: its republished
        writes are still buffered), or the callback itself ``wrote`` after this tick's flush."""
        flushed = timestamp > self.last_tick
        if flushed:
            self.writer.flush()
            self.last_tick = timestamp
        if self.pending.get(shard) == timestamp:
            del self.pending[shard]
            if wrote and not flushed:
                self._schedule(shard, ctx)
        else:
            self._schedule(shard, ctx)

    def close(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.flush()
            self.client.close()


class ParseEvents(ProcessFunction):
    """Raw line -> (Row(user shard, event), event time ms); a malformed line goes to the dead letters with its
    reason, and a marker of it to its shard (to be counted)."""

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
            shard = shard_of(value)
            yield Row(shard, malformed_marker(shard)), 0  # time 0 never moves the watermark
            return
        self.parsed += 1
        yield Row(e.user_id % SHARDS, (e.event_id, e.user_id, e.movie_id, e.rating, e.ts)), e.ts * 1000


class UserFeatures(KeyedProcessFunction, _Publisher):
    """Keyed by user shard: drop event ids seen within ``dedup_ttl_hours``, apply ``UserState.update``, write
    online:hist and online:user, count the shard's lines (online:stats and progress records)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        from flink_jobs.redis_io import GenreCache

        # Per user: (OnlineUser.to_state(), applied lines, duplicate lines). Per shard: malformed lines.
        self.users = ctx.get_map_state(MapStateDescriptor("users", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
        self.malformed_lines = ctx.get_state(ValueStateDescriptor("malformed", Types.LONG()))
        self._open_publisher(ctx)
        self.genres = GenreCache(self.client, self.keys)
        self.cache: dict[int, list] = {}  # user -> [OnlineUser, applied, duplicate]
        self.totals: dict[int, list[int]] = {}  # shard -> [applied, duplicate, malformed]
        self.counts_written: dict[int, list[int]] = {}  # shard -> the totals last buffered for Redis
        self.reported: dict[int, tuple[int, int]] = {}  # shard -> (second, count) of its last progress record
        self.counted = {"appliedEvents": 0, "duplicateEvents": 0, "reorderedEvents": 0}
        for name in self.counted:  # gauges of plain ints (Counter.inc would be a JVM call per event)
            ctx.get_metrics_group().gauge(name, lambda name=name: self.counted[name])

    def _first_touch(self, shard: int) -> None:
        from flink_jobs.online_state import OnlineUser

        totals = [0, 0, self.malformed_lines.value() or 0]
        for user_id, raw in self.users.items():
            user = OnlineUser.from_state(raw[0])
            totals[0] += raw[1]
            totals[1] += raw[2]
            self._publish(user_id, user)
            if len(self.cache) < self.settings.cache_keys:
                self.cache[user_id] = [user, raw[1], raw[2]]
        self.totals[shard] = totals
        self._publish_counts(shard)
        self.counts_written[shard] = list(totals)

    def _user(self, user_id: int) -> list:
        got = self.cache.get(user_id)
        if got is None:
            from flink_jobs.online_state import OnlineUser

            raw = self.users.get(user_id)
            got = [OnlineUser.from_state(raw[0]), raw[1], raw[2]] if raw else \
                [OnlineUser.empty(self.settings.history_len), 0, 0]
            if len(self.cache) >= self.settings.cache_keys:
                for old in list(self.cache)[: len(self.cache) // 8 + 1]:  # the oldest eighth
                    del self.cache[old]
            self.cache[user_id] = got
        return got

    def _publish(self, user_id: int, user: Any) -> None:
        self.writer.set(self.keys.online_history(user_id), lambda: K.encode_history(user.history()))
        self.writer.hset(self.keys.online_user(user_id), lambda: K.encode_fields(user.features()))

    def _publish_counts(self, shard: int) -> None:
        totals, stats = self.totals[shard], self.keys.stream_stats()
        for i, counter in enumerate(K.STREAM_COUNTERS):
            self.writer.hset_field(stats, K.stream_stat_field(counter, shard), lambda i=i: str(totals[i]))

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        event_id, user_id, movie_id, rating, ts = e
        shard = movie_id if user_id == 0 else user_id % SHARDS
        self._touch(shard, ctx)
        totals = self.totals[shard]
        self._schedule(shard, ctx)
        if user_id == 0:  # malformed_marker: one dead-lettered line
            totals[2] += 1
            self.malformed_lines.update(totals[2])
            return
        got = self._user(user_id)
        user = got[0]
        if user.seen.check_and_add(event_id, time.time(), self.settings.dedup_ttl_hours * 3600.0):
            got[2] += 1
            totals[1] += 1
            self.counted["duplicateEvents"] += 1
            self.users.put(user_id, (user.to_state(), got[1], got[2]))
            return
        if user.apply(movie_id, rating, ts, self.genres, self.settings.half_life_days, self.settings.reorder_events):
            self.counted["reorderedEvents"] += 1
        got[1] += 1
        totals[0] += 1
        self.counted["appliedEvents"] += 1
        self.users.put(user_id, (user.to_state(), got[1], got[2]))
        self._publish(user_id, user)
        yield Row(movie_id % SHARDS, e)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        """Publish the shard's counts, flush; and report its counted lines with the wall time they were read
        at (flink_jobs.progress says why), at most once a second."""
        from flink_jobs.progress import PROGRESS_EVERY_MS, progress_record

        shard = ctx.get_current_key()
        self._touch(shard, ctx)
        totals = self.totals[shard]
        wrote = totals != self.counts_written.get(shard)
        if wrote:  # buffered before the flush below, when this is the tick's first callback
            self._publish_counts(shard)
            self.counts_written[shard] = list(totals)
        self._published(timestamp, shard, ctx, wrote)
        total = sum(totals)
        if not self.settings.progress or total == self.reported.get(shard, (-1, 0))[1]:
            return
        second = timestamp // PROGRESS_EVERY_MS
        if self.reported.get(shard, (-1, 0))[0] != second:
            self.reported[shard] = (second, total)
            yield PROGRESS, progress_record(shard, total, time.time())
        else:  # reported this second already: once more at the next second, with the count then (that timer
            # is not in ``pending``, so ``_published`` treats it like a restored one: one extra tick, harmless)
            ctx.timer_service().register_processing_time_timer((second + 1) * PROGRESS_EVERY_MS)


class MovieStats(KeyedProcessFunction, _Publisher):
    """Keyed by movie shard: running mean and event-time sliding-window counts -> online:movie, trending."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def open(self, ctx: RuntimeContext) -> None:
        self.movies = ctx.get_map_state(MapStateDescriptor("movies", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
        self._open_publisher(ctx)
        self.cache: dict[int, Any] = {}  # movie -> OnlineMovie (every movie of a touched shard: the catalogue)
        self.expiring: dict[int, dict[int, set[int]]] = {}  # shard -> bucket expiry (ms) -> movies with that bucket
        self.watermark, self.until_watermark = -(2 ** 63), 0

    def _first_touch(self, shard: int) -> None:
        from flink_jobs.online_state import OnlineMovie, bucket_expiry_ms

        expiring = self.expiring.setdefault(shard, {})
        s = self.settings
        for movie_id, raw in self.movies.items():
            movie = self.cache[movie_id] = OnlineMovie.from_state(raw)
            for bucket in movie.buckets:  # their timers are in the restored state too
                expiring.setdefault(bucket_expiry_ms(bucket, s.trending_slide_s, s.trending_window_s), set()).add(movie_id)
            self._publish(movie_id, movie)

    def _publish(self, movie_id: int, movie: Any) -> None:
        self.writer.hset(self.keys.online_movie(movie_id), lambda: K.encode_fields(movie.features()))
        self.writer.zscore(self.keys.trending(), str(movie_id), movie.trending)

    def process_element(self, e: tuple, ctx: KeyedProcessFunction.Context) -> Iterable[Any]:
        from flink_jobs.online_state import OnlineMovie

        _, _, movie_id, rating, ts = e
        shard = movie_id % SHARDS
        self._touch(shard, ctx)
        movie = self.cache.get(movie_id)
        if movie is None:
            raw = self.movies.get(movie_id)
            movie = self.cache[movie_id] = OnlineMovie.from_state(raw) if raw else OnlineMovie()
        s = self.settings
        self.until_watermark -= 1
        if self.until_watermark <= 0:
            # Read every WATERMARK_EVERY events (a JVM call). A stale, lower watermark can only let an
            # event into a bucket that just expired; its timer is then already due and removes it.
            self.watermark, self.until_watermark = ctx.timer_service().current_watermark(), WATERMARK_EVERY
        expiry = movie.apply(rating, ts, s.trending_slide_s, s.trending_window_s, self.watermark)
        if expiry is not None:
            movies = self.expiring[shard].get(expiry)
            if movies is None:  # the shard's first movie with this bucket: its timer
                movies = self.expiring[shard][expiry] = set()
                ctx.timer_service().register_event_time_timer(expiry)
            movies.add(movie_id)
        self.movies.put(movie_id, movie.to_state())
        self._publish(movie_id, movie)
        self._schedule(shard, ctx)
        return []

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterable[Any]:
        shard = ctx.get_current_key()
        self._touch(shard, ctx)
        if ctx.time_domain() == TimeDomain.EVENT_TIME:  # buckets left the window
            self.watermark = max(self.watermark, timestamp)
            s = self.settings
            for movie_id in self.expiring[shard].pop(timestamp, ()):
                movie = self.cache[movie_id]
                movie.expire(timestamp, s.trending_slide_s, s.trending_window_s)
                self.movies.put(movie_id, movie.to_state())
                self._publish(movie_id, movie)
            self._schedule(shard, ctx)
        else:
            self._published(timestamp, shard, ctx)
        return []


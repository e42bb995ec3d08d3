"""Redis from inside the stream job: a coalescing, pipelined writer and a movie-genre cache.

Why a buffer and not a write per event: one round trip per event caps the job at a few
thousand events a second; buffering ``stream.sink_batch`` writes into one pipeline
removes that cap. Writes are *absolute values derived from keyed state* (SET/HSET the
whole value, ZADD the count), so the buffer keeps only the last write per key and a
write repeated after a restart is harmless: idempotent by construction.

When the buffer is flushed matters for exactly-once: the operators flush it when it is
full and at the end of every PyFlink bundle. Flink finishes the bundle before it takes a
checkpoint (``prepareSnapshotPreBarrier``), so every write caused by an event before a
checkpoint is in Redis before that checkpoint completes; events after it are replayed
after a failure and rewrite their keys.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import redis

from pipeline import keys as K


class BufferedWriter:
    """Last-write-wins buffer of Redis writes, flushed as one non-transactional pipeline.

    ``ttl_s`` > 0: every whole-value write (``set``, ``hset``: the per-user and per-movie online
    keys) also sets that expiry, in the same pipeline (no extra round trip), so a key lives
    ``ttl_s`` after its last write. Counter fields (``hset_field``: online:stats, which progress
    waits read) and ZSET scores (trending, bounded by its window) get none.
    """

    def __init__(self, client: redis.Redis, batch: int, ttl_s: int = 0) -> None:
        self.client = client
        self.batch = max(1, int(batch))
        self.ttl_s = max(0, int(ttl_s))
        self._pending: dict[tuple[str, str, str], tuple[str, Any]] = {}
        self.flushed = 0  # writes sent so far (a metric)

    def set(self, key: str, value: str) -> None:
        self._put(("set", key, ""), ("set", value))

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self._put(("hset", key, ""), ("hset", mapping))

    def hset_field(self, key: str, field: str, value: str) -> None:
        """One field of a hash whose fields are written independently (counters)."""
        self._put(("hfield", key, field), ("hfield", value))

    def zscore(self, key: str, member: str, score: float) -> None:
        """ZADD the absolute score, or ZREM the member when the score is 0 (it left the window)."""
        self._put(("z", key, member), ("zadd", score) if score > 0 else ("zrem", None))

    def _put(self, slot: tuple[str, str, str], op: tuple[str, Any]) -> None:
        self._pending.pop(slot, None)  # re-insert: flush order follows the latest write
        self._pending[slot] = op
        if len(self._pending) >= self.batch:
            self.flush()

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Send everything pending; raises on a Redis error (the job fails and replays from its checkpoint)."""
        if not self._pending:
            return self.flushed
        pipe = self.client.pipeline(transaction=False)
        for (_, key, member), (kind, value) in self._pending.items():
            if kind == "set":
                pipe.set(key, value, ex=self.ttl_s or None)
            elif kind == "hset":
                pipe.hset(key, mapping=value)
                if self.ttl_s:
                    pipe.expire(key, self.ttl_s)
            elif kind == "hfield":
                pipe.hset(key, member, value)
            elif kind == "zadd":
                pipe.zadd(key, {member: value})
            else:
                pipe.zrem(key, member)
        pipe.execute()
        self.flushed += len(self._pending)
        self._pending.clear()
        return self.flushed


class GenreCache:
    """Movie id -> genres from the published batch version (``keys.movie(v, id)`` field ``genres``).

    Loaded in bulk on first use and reloaded when ``current`` switches (checked at most
    every ``recheck_s``); a movie the batch never saw has no genres (it still counts).
    """

    def __init__(self, client: redis.Redis, keys: K.Keys, recheck_s: float = 30.0) -> None:
        self.client, self.keys, self.recheck_s = client, keys, recheck_s
        self.version: str | None = None
        self._genres: dict[int, tuple[str, ...]] = {}
        self._checked = 0.0

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        raw = self.client.get(self.keys.current())
        version = raw.decode() if raw else None
        if version == self.version and self._genres:
            return
        self.version, self._genres = version, {}
        if version is None:
            return
        ids = json.loads(self.client.get(self.keys.movie_ids(version)) or "[]")
        pipe = self.client.pipeline(transaction=False)
        for m in ids:
            pipe.hget(self.keys.movie(version, m), "genres")
        for m, g in zip(ids, pipe.execute()):
            self._genres[int(m)] = tuple(json.loads(g)) if g else ()

    def __call__(self, movie_id: int) -> Sequence[str]:
        if time.monotonic() - self._checked > self.recheck_s:
            self._refresh()
        got = self._genres.get(int(movie_id))
        if got is None:
            got = ()
            if self.version is not None:  # listed movies are preloaded; look up the others once
                raw = self.client.hget(self.keys.movie(self.version, movie_id), "genres")
                got = tuple(json.loads(raw)) if raw else ()
            self._genres[int(movie_id)] = got
        return got

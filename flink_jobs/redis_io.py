"""Redis from inside the stream job: a coalescing, batched writer and a movie-genre cache.

Why a buffer and not a write per event: one round trip per event caps the job at a few
thousand events a second; buffering up to ``stream.sink_batch`` writes into one call
removes that cap. Writes are *absolute values derived from keyed state* (SET/HSET the
whole value, ZADD the count), so the buffer keeps only the last write per key and a
write repeated after a restart is harmless: idempotent by construction.

A value may be a zero-argument callable, called at flush: the operators buffer "this key's
value, as it will be then" and a key written by many events of one interval is encoded
once, from its latest state.

When the buffer is flushed matters for exactly-once; ``flink_jobs.operators`` (the
``Publisher`` class) says how a flush is tied to the job's processing-time timers so that no
write a completed checkpoint depends on is lost.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence, Union

import redis

from pipeline import keys as K


Later = Union[Any, Callable[[], Any]]  # a value, or a callable giving it at flush time


def _now(value: Later) -> Any:
    return value() if callable(value) else value


class BufferedWriter:
    """Last-write-wins buffer of Redis writes, flushed as one script call (one round trip).

    ``ttl_s`` > 0: every whole-value write (``set``, ``hset``: the per-user and per-movie online
    keys) also sets that expiry, in the same call, so a key lives
    ``ttl_s`` after its last write. Counter fields (``hset_field``: online:stats, which progress
    waits read) and ZSET scores (trending, bounded by its window) get none.
    """

    def __init__(self, client: redis.Redis, batch: int, ttl_s: int = 0) -> None:
        self.client = client
        self.batch = max(1, int(batch))
        self.ttl_s = max(0, int(ttl_s))
        self._pending: dict[tuple[str, str, str], tuple[str, Later]] = {}
        self.flushed = 0  # writes sent so far (a metric)

    def set(self, key: str, value: Later) -> None:
        self._put(("set", key, ""), ("set", value))

    def hset(self, key: str, mapping: Later) -> None:
        self._put(("hset", key, ""), ("hset", mapping))

    def hset_field(self, key: str, field: str, value: Later) -> None:
        """One field of a hash whose fields are written independently (counters)."""
        self._put(("hfield", key, field), ("hfield", value))

    def zscore(self, key: str, member: str, score: Later) -> None:
        """ZADD the absolute score, or ZREM the member when the score is 0 (it left the window)."""
        self._put(("z", key, member), ("z", score))

    def _put(self, slot: tuple[str, str, str], op: tuple[str, Any]) -> None:
        self._pending.pop(slot, None)  # re-insert: flush order follows the latest write
        self._pending[slot] = op
        if len(self._pending) >= self.batch:
            self.flush()

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Send everything pending as one ``EVAL`` of ``_APPLY_LUA`` (one round trip, one reply);
        raises on a Redis error (the job fails and replays from its checkpoint)."""
        if not self._pending:
            return self.flushed
        args = [b"EVAL", _APPLY_LUA, b"0", str(self.ttl_s).encode()]
        add = args.append
        for (kind, key, member), (_, later) in self._pending.items():
            value = _now(later)
            if kind == "set":
                args += (b"s", key.encode(), value.encode())
            elif kind == "hset":
                if not value:
                    continue
                add(b"h")
                add(key.encode())
                add(b"%d" % len(value))
                for f, v in value.items():
                    add(f.encode())
                    add(v.encode())
            elif kind == "hfield":
                args += (b"f", key.encode(), member.encode(), value.encode())
            else:
                args += (b"z", key.encode(), member.encode(), repr(value).encode())
        _call_packed(self.client, args)
        self.flushed += len(self._pending)
        self._pending.clear()
        return self.flushed


# The writes of one flush, applied by Redis in one script: ARGV = ttl, then ops
#   s key value | h key n f1 v1 .. fn vn | f key field value | z key member score (<= 0: ZREM).
# A script call is one command and one reply: redis-py's per-command packing and reply parsing
# cost more than the job's own work per event (measured: ~25 us a command), and a script is atomic.
_APPLY_LUA = b"""
local ttl = tonumber(ARGV[1])
local i, n = 2, #ARGV
while i <= n do
  local op, key = ARGV[i], ARGV[i + 1]
  if op == 's' then
    if ttl > 0 then redis.call('SET', key, ARGV[i + 2], 'EX', ttl) else redis.call('SET', key, ARGV[i + 2]) end
    i = i + 3
  elseif op == 'h' then
    local m = tonumber(ARGV[i + 2])
    redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + 2 * m))
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    i = i + 3 + 2 * m
  elseif op == 'f' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'z' then
    if tonumber(ARGV[i + 3]) > 0 then redis.call('ZADD', key, ARGV[i + 3], ARGV[i + 2]) else redis.call('ZREM', key, ARGV[i + 2]) end
    i = i + 4
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return n
"""


def _call_packed(client: redis.Redis, args: list[bytes]) -> Any:
    """One command, packed here (RESP: ``*n`` then ``$len`` + bytes per argument) on a pooled connection."""
    packed = b"".join([b"*%d\r\n" % len(args), *(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)])
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed])
        return conn.read_response()  # an error reply is raised (redis.ResponseError)
    except BaseException:
        conn.disconnect()  # a half-read reply must not reach the next user of this connection
        raise
    finally:
        pool.release(conn)


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

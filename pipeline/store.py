"""The online store: what the serving path reads of a published version, behind one small interface.

``OnlineStore`` is the seam. The gateway, its version tracker and the movie catalog
read only through it, so the same code runs against Redis in production and in the
integration tests (``RedisStore``) and against plain dictionaries in the gateway's
unit tests (``InMemoryStore``), where every branch (cold start, degraded, filters,
blend) runs in milliseconds without Redis, Spark or TensorFlow.

What one store object answers, for one published version (``version``):

* ``current_version()`` - the version readers should use now (``NotPublished`` if none);
* ``at_version(v)`` - a store for another version, with its own caches;
* ``user_context(user)`` - recall context and raw features (batch + stream);
* ``user_list`` / ``item_lists`` / ``global_list`` / ``trending`` - the published
  candidate lists (``pipeline.recall.RecallStore``);
* ``movie_features()`` - every movie's published features (the gateway's catalog).

Every read raises ``StoreUnavailable`` when the store cannot answer now (Redis down or
slow); callers answer degraded instead. Example::

    store = RedisStore(redis.Redis.from_url(url), "rs")    # version: CURRENT, read on first use
    ctx, feats = store.user_context(42)
    store.at_version(store.current_version()).global_list(K.list_popular())
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import redis

from pipeline import keys as K
from pipeline.recall import USER_LISTS, RecallContext, Scored

History = list[tuple[int, float, int]]  # (movie_id, rating, ts), oldest first


class NotPublished(RuntimeError):
    """Nothing has been published to this store (run `recsys batch`)."""


class StoreUnavailable(RuntimeError):
    """The store cannot be read right now (down, refused, timed out); the caller answers degraded."""


class OnlineStore(Protocol):
    """What the gateway reads: one published version's features and lists, and which version is current."""

    @property
    def version(self) -> str: ...

    def current_version(self) -> str: ...

    def at_version(self, version: str) -> "OnlineStore": ...

    def user_context(self, user_id: int, history_len: int | None = None) -> tuple[RecallContext, dict[str, Any]]: ...

    def user_list(self, name: str, user_id: int) -> Scored: ...

    def item_lists(self, name: str, movie_ids: Sequence[int]) -> dict[int, Scored]: ...

    def global_list(self, name: str) -> Scored: ...

    def trending(self, n: int) -> Scored: ...

    def movie_features(self) -> dict[int, dict[str, Any]]: ...


def merge_context(user_id: int, feats: dict[str, Any], batch_history: History, seen: set[int],
                  online_history: History, online_feats: dict[str, Any] | None,
                  history_len: int | None, user_lists: dict[str, Scored] | None = None,
                  ) -> tuple[RecallContext, dict[str, Any]]:
    """Batch and stream views of a user -> one recall context, the same for every store.

    History is the batch history followed by the online history (stream), de-duplicated
    by (movie, ts); ``exclude`` is everything the user rated, batch and online. The
    stream's own statistics (``online:user``: count and mean over stream events) come
    back as ``feats["online"]`` so callers can combine them with the batch ones;
    ``user_lists`` (the user's ``recall.USER_LISTS`` read in the same round trip) ride along.
    """
    feats = dict(feats)
    if online_feats:
        feats["online"] = dict(online_feats)
    history = list(batch_history)
    known = {(m, t) for m, _, t in history}
    history += [e for e in online_history if (e[0], e[2]) not in known]
    exclude = set(seen) | {m for m, _, _ in history}
    if history_len:
        history = history[-history_len:]
    ctx = RecallContext(user_id=user_id, history=history, age_bucket=feats.get("age_bucket"),
                        gender=feats.get("gender"), top_genres=list(feats.get("top_genres") or []), exclude=exclude,
                        user_lists=dict(user_lists or {}))
    return ctx, feats


# --------------------------------------------------------------------------- Redis
LOAD_CHUNK = 1000  # movie hashes per pipelined round trip
TRENDING_SECONDS = 1.0  # the trending ZSET (one for everyone, moved by the stream) is re-read at most this often
TRENDING_READ = 500     # ... and at least this many entries at a time


class RedisStore:
    """The key layout of ``pipeline.keys`` read back, for one published version.

    ``version`` defaults to the current one, read on first use (so a gateway can start
    before anything is published). Lists shared by many users (global lists, per-movie
    lists) are cached in process: they are immutable within a version.
    """

    def __init__(self, client: redis.Redis, prefix: str = "rs", version: str | None = None) -> None:
        self.client = client
        self.keys = K.Keys(prefix)
        self._version = version
        self._item_cache: dict[tuple[str, int], Scored] = {}
        self._global_cache: dict[str, Scored] = {}
        self._trending: tuple[float, int, Scored] = (float("-inf"), 0, [])  # (read at, entries asked, entries)

    @staticmethod
    @contextlib.contextmanager
    def _reading() -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = self.current_version()
        return self._version

    def current_version(self) -> str:
        with self._reading():
            raw = self.client.get(self.keys.current())
        if not raw:
            raise NotPublished(f"no published version at {self.keys.current()}: run `recsys batch` first")
        return raw.decode()

    def at_version(self, version: str) -> "RedisStore":
        return RedisStore(self.client, self.keys.prefix, version=version)

    def manifest(self) -> dict[str, Any]:
        with self._reading():
            return K.decode_fields(self.client.hgetall(self.keys.manifest(self.version)))

    def user_context(self, user_id: int, history_len: int | None = None) -> tuple[RecallContext, dict[str, Any]]:
        """Recall context, raw features and per-user lists of a user, in one pipeline round trip (see
        ``merge_context``): with the global lists cached per version and trending per second, this is the
        only Redis round trip of a typical Recommend."""
        v, k = self.version, self.keys
        with self._reading():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(k.user(v, user_id))
            pipe.get(k.user_history(v, user_id))
            pipe.get(k.user_seen(v, user_id))
            pipe.get(k.online_history(user_id))
            pipe.hgetall(k.online_user(user_id))
            for name in USER_LISTS:
                pipe.get(k.user_list(v, name, user_id))
            raw_user, raw_hist, raw_seen, raw_online, raw_online_user, *raw_lists = pipe.execute()
        return merge_context(user_id, K.decode_fields(raw_user) if raw_user else {}, K.decode_history(raw_hist),
                             K.decode_ids(raw_seen), K.decode_history(raw_online),
                             K.decode_fields(raw_online_user) if raw_online_user else None, history_len,
                             {name: K.decode_scored(raw) for name, raw in zip(USER_LISTS, raw_lists)})

    # --- RecallStore ----------------------------------------------------------------
    def user_list(self, name: str, user_id: int) -> Scored:
        with self._reading():
            return K.decode_scored(self.client.get(self.keys.user_list(self.version, name, user_id)))

    def item_lists(self, name: str, movie_ids: Sequence[int]) -> dict[int, Scored]:
        missing = [m for m in movie_ids if (name, m) not in self._item_cache]
        if missing:
            with self._reading():
                raws = self.client.mget([self.keys.item_list(self.version, name, m) for m in missing])
            for m, raw in zip(missing, raws):
                self._item_cache[(name, m)] = K.decode_scored(raw)
        return {m: self._item_cache[(name, m)] for m in movie_ids}

    def global_list(self, name: str) -> Scored:
        if name not in self._global_cache:
            with self._reading():
                self._global_cache[name] = K.decode_scored(self.client.get(self.keys.global_list(self.version, name)))
        return self._global_cache[name]

    def trending(self, n: int) -> Scored:
        """The ``n`` most rated movies of the stream's window; one ZSET read per second serves every request."""
        read_at, asked, entries = self._trending
        if time.monotonic() - read_at >= TRENDING_SECONDS or n > asked:
            asked = max(n, TRENDING_READ)
            with self._reading():
                raw = self.client.zrevrange(self.keys.trending(), 0, asked - 1, withscores=True)
            entries = [(int(m), float(s)) for m, s in raw]
            self._trending = (time.monotonic(), asked, entries)
        return entries[:n]

    # --- catalog --------------------------------------------------------------------
    def movie_features(self) -> dict[int, dict[str, Any]]:
        """Every listed movie's feature hash of the version (``in_catalog`` says which are recommendable), in a few
        pipelined round trips. Versions published before the listed key existed hold recommendable movies only."""
        out: dict[int, dict[str, Any]] = {}
        with self._reading():
            ids = json.loads(self.client.get(self.keys.listed_movie_ids(self.version)) or "null") or \
                json.loads(self.client.get(self.keys.movie_ids(self.version)) or "[]")
            for start in range(0, len(ids), LOAD_CHUNK):
                chunk = ids[start:start + LOAD_CHUNK]
                pipe = self.client.pipeline(transaction=False)
                for movie_id in chunk:
                    pipe.hgetall(self.keys.movie(self.version, movie_id))
                for movie_id, raw in zip(chunk, pipe.execute()):
                    if raw:
                        out[int(movie_id)] = K.decode_fields(raw)
        return out

    # --- operations (benchmarks, evaluation, demo), not the gateway's reads ---------
    def user_ids(self, limit: int) -> list[int]:
        """Up to ``limit`` users with published features in this version (a SCAN, for benchmarks)."""
        pattern = self.keys.user(self.version, 0)[:-1] + "*"
        users: list[int] = []
        with self._reading():
            for key in self.client.scan_iter(match=pattern, count=1000):
                users.append(int(key.decode().rsplit(":", 1)[1]))
                if len(users) >= limit:
                    break
        return sorted(users)

    def online_users(self) -> int:
        """How many users have stream (online) history under this prefix."""
        with self._reading():
            return sum(1 for _ in self.client.scan_iter(match=self.keys.online_prefix() + "hist:*", count=1000))

    def clear_online(self) -> int:
        """Delete every stream-derived key of the prefix (a replay starts from the batch state only)."""
        n = 0
        with self._reading():
            for key in self.client.scan_iter(match=self.keys.online_prefix() + "*", count=1000):
                n += self.client.delete(key)
        return n


# --------------------------------------------------------------------------- in memory
@dataclass
class PublishedVersion:
    """One version's data as plain values (what ``publish`` writes to Redis, decoded)."""

    users: dict[int, dict[str, Any]] = field(default_factory=dict)        # user hash fields
    histories: dict[int, History] = field(default_factory=dict)
    seen: dict[int, set[int]] = field(default_factory=dict)
    user_lists: dict[str, dict[int, Scored]] = field(default_factory=dict)  # name -> user -> list
    item_lists: dict[str, dict[int, Scored]] = field(default_factory=dict)  # name -> movie -> list
    global_lists: dict[str, Scored] = field(default_factory=dict)           # K.list_* name -> list
    movies: dict[int, dict[str, Any]] = field(default_factory=dict)         # movie hash fields


class InMemoryStore:
    """``OnlineStore`` over dictionaries: the gateway's unit tests, or anything without a Redis.

    ``versions`` holds what was published, ``current`` which one readers use; the
    online (stream) part is shared by all versions, as in Redis. ``down = True``
    makes every read raise ``StoreUnavailable`` (Redis down), for the degraded paths.

        store = InMemoryStore({"v1": PublishedVersion(movies={1: {"title": "Heat"}})}, current="v1")
    """

    def __init__(self, versions: dict[str, PublishedVersion] | None = None, current: str | None = None,
                 version: str | None = None, *, online_histories: dict[int, History] | None = None,
                 online_users: dict[int, dict[str, Any]] | None = None, trending: Scored | None = None) -> None:
        self.versions = versions if versions is not None else {}
        self.current = current
        self.online_histories = online_histories if online_histories is not None else {}
        self.online_user_feats = online_users if online_users is not None else {}
        self.trending_list: Scored = trending if trending is not None else []
        self.down = False
        self._version = version
        self._root = self

    def _check(self) -> None:
        if self._root.down:
            raise StoreUnavailable("the in-memory store is marked down")

    def _data(self) -> PublishedVersion:
        self._check()
        return self._root.versions.get(self.version, PublishedVersion())

    @property
    def version(self) -> str:
        return self._version or self.current_version()

    def current_version(self) -> str:
        self._check()
        if not self._root.current:
            raise NotPublished("nothing published to the in-memory store")
        return self._root.current

    def at_version(self, version: str) -> "InMemoryStore":
        view = InMemoryStore(version=version)
        view._root = self._root
        return view

    def user_context(self, user_id: int, history_len: int | None = None) -> tuple[RecallContext, dict[str, Any]]:
        data, root = self._data(), self._root
        return merge_context(user_id, data.users.get(user_id, {}), data.histories.get(user_id, []),
                             data.seen.get(user_id, set()), root.online_histories.get(user_id, []),
                             root.online_user_feats.get(user_id), history_len,
                             {name: list(data.user_lists.get(name, {}).get(user_id, [])) for name in USER_LISTS})

    def user_list(self, name: str, user_id: int) -> Scored:
        return list(self._data().user_lists.get(name, {}).get(user_id, []))

    def item_lists(self, name: str, movie_ids: Sequence[int]) -> dict[int, Scored]:
        lists = self._data().item_lists.get(name, {})
        return {m: list(lists.get(m, [])) for m in movie_ids}

    def global_list(self, name: str) -> Scored:
        return list(self._data().global_lists.get(name, []))

    def trending(self, n: int) -> Scored:
        self._check()
        return sorted(self._root.trending_list, key=lambda x: -x[1])[:n]

    def movie_features(self) -> dict[int, dict[str, Any]]:
        return {m: dict(f) for m, f in self._data().movies.items()}

"""Reading what the batch plane published (and the stream keeps fresh) from Redis.

One class, used by the evaluator now and the gateway later: it resolves the current
published version, reads a user's context in one round trip, and implements
``pipeline.recall.RecallStore`` with small in-process caches for lists shared by
many users (global lists, per-movie lists), which are immutable within a version.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis

from pipeline import keys as K
from pipeline.recall import RecallContext, Scored


class NotPublished(RuntimeError):
    """Nothing has been published to this Redis (run `recsys batch`)."""


class RedisStore:
    """Read side of the key layout in ``pipeline.keys`` for one published version."""

    def __init__(self, client: redis.Redis, prefix: str = "rs", version: str | None = None) -> None:
        self.client = client
        self.keys = K.Keys(prefix)
        self.version = version or self.current_version()
        self._item_cache: dict[tuple[str, int], Scored] = {}
        self._global_cache: dict[str, Scored] = {}

    def current_version(self) -> str:
        raw = self.client.get(self.keys.current())
        if not raw:
            raise NotPublished(f"no published version at {self.keys.current()}: run `recsys batch` first")
        return raw.decode()

    def manifest(self) -> dict[str, Any]:
        return K.decode_fields(self.client.hgetall(self.keys.manifest(self.version)))

    # --- user context -------------------------------------------------------------
    def user_context(self, user_id: int, history_len: int | None = None) -> tuple[RecallContext, dict[str, Any]]:
        """Recall context and raw features of a user, in one pipeline round trip.

        History is the batch history followed by the online history (stream), de-duplicated
        by (movie, ts); ``exclude`` is everything the user rated, batch and online. The
        stream's own statistics (``online:user``: count and mean over stream events) come
        back as ``feats["online"]`` so callers can combine them with the batch ones.
        """
        v, k = self.version, self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.user(v, user_id))
        pipe.get(k.user_history(v, user_id))
        pipe.get(k.user_seen(v, user_id))
        pipe.get(k.online_history(user_id))
        pipe.hgetall(k.online_user(user_id))
        raw_user, raw_hist, raw_seen, raw_online, raw_online_user = pipe.execute()
        feats = K.decode_fields(raw_user) if raw_user else {}
        if raw_online_user:
            feats["online"] = K.decode_fields(raw_online_user)
        history = K.decode_history(raw_hist)
        known = {(m, t) for m, _, t in history}
        history += [e for e in K.decode_history(raw_online) if (e[0], e[2]) not in known]
        seen = K.decode_ids(raw_seen) | {m for m, _, _ in history}
        if history_len:
            history = history[-history_len:]
        ctx = RecallContext(user_id=user_id, history=history, age_bucket=feats.get("age_bucket"),
                            gender=feats.get("gender"), top_genres=list(feats.get("top_genres") or []), exclude=seen)
        return ctx, feats

    # --- RecallStore ----------------------------------------------------------------
    def user_list(self, name: str, user_id: int) -> Scored:
        return K.decode_scored(self.client.get(self.keys.user_list(self.version, name, user_id)))

    def item_lists(self, name: str, movie_ids: Sequence[int]) -> dict[int, Scored]:
        missing = [m for m in movie_ids if (name, m) not in self._item_cache]
        if missing:
            raws = self.client.mget([self.keys.item_list(self.version, name, m) for m in missing])
            for m, raw in zip(missing, raws):
                self._item_cache[(name, m)] = K.decode_scored(raw)
        return {m: self._item_cache[(name, m)] for m in movie_ids}

    def global_list(self, name: str) -> Scored:
        if name not in self._global_cache:
            self._global_cache[name] = K.decode_scored(self.client.get(self.keys.global_list(self.version, name)))
        return self._global_cache[name]

    def trending(self, n: int) -> Scored:
        return [(int(m), float(s)) for m, s in self.client.zrevrange(self.keys.trending(), 0, n - 1, withscores=True)]

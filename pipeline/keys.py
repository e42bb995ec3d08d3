"""Every Redis key name and value layout of the project, in one place.

The byte layout is specified in ``pipeline/KEYS.md`` (bump ``LAYOUT_VERSION`` when a
layout changes; it is part of every key, so old and new code never misread each
other's values).

Batch outputs live under a *batch version* ``b:<version>:...`` and become visible when
``current`` is switched to that version in one SET: a reader first reads ``current``
and then only keys of that version, so it never mixes two publishes. The previous
version is kept (``publish.keep_versions``) so a reader that read ``current`` just
before a switch still finds its keys.

Online (stream) keys are not versioned: they are derived from keyed state and are
written idempotently by the stream job.

Example::

    keys = Keys("rs")
    keys.current()                     # 'rs:v1:current'
    keys.user_history("v2026...", 42)  # 'rs:v1:b:v2026...:hist:42'
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

LAYOUT_VERSION = 1

# Names of per-user and per-movie candidate lists written by the batch plane.
USER_LISTS = ("als",)
ITEM_LISTS = ("similar", "next")


class Keys:
    """Key builder for one prefix (one deployment)."""

    def __init__(self, prefix: str = "rs") -> None:
        if not prefix or ":" in prefix or " " in prefix:
            raise ValueError(f"invalid key prefix {prefix!r}: non-empty, without ':' or spaces")
        self.prefix = prefix
        self.base = f"{prefix}:v{LAYOUT_VERSION}"

    # --- publish control -------------------------------------------------------
    def current(self) -> str:
        """STRING: the batch version readers use."""
        return f"{self.base}:current"

    def versions(self) -> str:
        """ZSET: published batch versions scored by publish time (for clean-up)."""
        return f"{self.base}:versions"

    def publish_seq(self) -> str:
        """STRING counter: the publish lock's fencing token, and the ``<n>`` of each published version."""
        return f"{self.base}:publish-seq"

    def publish_lock(self) -> str:
        """STRING with TTL, renewed: held while a publish runs (``pipeline.lease.RedisLease``)."""
        return f"{self.base}:publish-lock"

    def publish_building(self) -> str:
        """HASH version -> lease value: versions whose keys are being written (a killed publish's stay here)."""
        return f"{self.base}:publish-building"

    def version_prefix(self, version: str) -> str:
        return f"{self.base}:b:{version}:"

    def manifest(self, version: str) -> str:
        """HASH: what the version holds (counts, split, created) - written last, before the switch."""
        return f"{self.version_prefix(version)}manifest"

    # --- batch features -----------------------------------------------------------
    def user(self, version: str, user_id: int) -> str:
        """HASH: offline user features, each field a JSON value."""
        return f"{self.version_prefix(version)}user:{int(user_id)}"

    def movie(self, version: str, movie_id: int) -> str:
        """HASH: offline movie features, each field a JSON value."""
        return f"{self.version_prefix(version)}movie:{int(movie_id)}"

    def movie_ids(self, version: str) -> str:
        """STRING: JSON list of the recommendable movie ids of the version (rated after the 5-core filter)."""
        return f"{self.version_prefix(version)}movie-ids"

    def listed_movie_ids(self, version: str) -> str:
        """STRING: JSON list of every movie the dataset lists (a ``movie:`` hash each), recommendable or not.

        Rank must score any of them: a movie the filter dropped, or too rare for the model's vocabulary, goes
        through the model's new-movie path instead of being refused as unknown.
        """
        return f"{self.version_prefix(version)}movie-ids:listed"

    def user_seen(self, version: str, user_id: int) -> str:
        """STRING: every movie id the user rated, packed little-endian int32 (see encode_ids)."""
        return f"{self.version_prefix(version)}seen:{int(user_id)}"

    def user_history(self, version: str, user_id: int) -> str:
        """STRING: JSON [[movie_id, rating, ts], ...] oldest first, the last `features.history_len`."""
        return f"{self.version_prefix(version)}hist:{int(user_id)}"

    # --- recall lists -----------------------------------------------------------
    def user_list(self, version: str, name: str, user_id: int) -> str:
        """STRING: scored list (see encode_scored) of candidates for one user, e.g. ALS."""
        _check(name, USER_LISTS)
        return f"{self.version_prefix(version)}ulist:{name}:{int(user_id)}"

    def item_list(self, version: str, name: str, movie_id: int) -> str:
        """STRING: scored list of movies related to one movie ('similar', 'next')."""
        _check(name, ITEM_LISTS)
        return f"{self.version_prefix(version)}ilist:{name}:{int(movie_id)}"

    def global_list(self, version: str, name: str) -> str:
        """STRING: a scored list shared by all users; names come from the list_* helpers below."""
        return f"{self.version_prefix(version)}glist:{name}"

    # --- online (stream) keys, unversioned --------------------------------------
    def online_prefix(self) -> str:
        """Every stream-derived key starts with this (SCAN patterns: clearing, counting)."""
        return f"{self.base}:online:"

    def online_history(self, user_id: int) -> str:
        """STRING: JSON [[movie_id, rating, ts], ...] of ratings seen by the stream."""
        return f"{self.base}:online:hist:{int(user_id)}"

    def online_user(self, user_id: int) -> str:
        """HASH: online user features (same fields as the batch user hash)."""
        return f"{self.base}:online:user:{int(user_id)}"

    def trending(self) -> str:
        """ZSET: movie_id -> live rating count in the sliding window."""
        return f"{self.base}:online:trending"

    def online_movie(self, movie_id: int) -> str:
        """HASH: online movie statistics (n_ratings, mean_rating, last_ts, window_ratings), JSON fields."""
        return f"{self.base}:online:movie:{int(movie_id)}"

    def stream_stats(self) -> str:
        """HASH: the stream job's progress counters, one field per counter and shard (see KEYS.md)."""
        return f"{self.base}:online:stats"


def batch_version_of(published: str) -> str:
    """The home's batch version of a published Redis version ``<batch version>.<n>`` (``n``: the publish's
    fencing token, so a re-publish of the same batch is a new Redis version of the same data)."""
    head, dot, tail = published.rpartition(".")
    return head if dot and tail.isdigit() else published


def _check(name: str, allowed: Sequence[str]) -> None:
    if name not in allowed:
        raise ValueError(f"unknown list name {name!r} (known: {', '.join(allowed)})")


# Names of global lists (kept here so writer and readers agree).
def list_popular(genre: str | None = None) -> str:
    return "popular:all" if genre is None else f"popular:genre:{genre}"


def list_toprated(genre: str | None = None) -> str:
    return "toprated:all" if genre is None else f"toprated:genre:{genre}"


def list_demographic(age_bucket: int | None, gender: str | None) -> str:
    return f"popular:demo:{age_bucket if age_bucket is not None else 'any'}:{gender or 'any'}"


# --- the stream job's progress counters (online:stats) --------------------------
# Fields are "<counter>:<shard>", each an absolute count from keyed state; readers sum the shards.
STREAM_COUNTERS = ("applied", "duplicate", "malformed")


def stream_stat_field(counter: str, shard: int) -> str:
    _check(counter, STREAM_COUNTERS)
    return f"{counter}:{int(shard)}"


def decode_stream_stats(raw: dict[bytes | str, bytes | str]) -> dict[str, int]:
    """The online:stats hash summed over shards, plus ``consumed`` (every counted line)."""
    out = {c: 0 for c in STREAM_COUNTERS}
    for field, value in raw.items():
        name = (field.decode() if isinstance(field, bytes) else field).split(":", 1)[0]
        if name in out:
            out[name] += int(value)
    out["consumed"] = sum(out[c] for c in STREAM_COUNTERS)
    return out


# --- value codecs -------------------------------------------------------------------
def encode_scored(items: Iterable[tuple[int, float]]) -> str:
    """Scored list -> compact JSON ``[[movie_id, score], ...]`` (best first, 5 significant digits)."""
    return json.dumps([[int(m), float(f"{s:.5g}")] for m, s in items], separators=(",", ":"))


def decode_scored(raw: bytes | str | None) -> list[tuple[int, float]]:
    if not raw:
        return []
    return [(int(m), float(s)) for m, s in json.loads(raw)]


def encode_ids(ids: Iterable[int]) -> bytes:
    """Movie id set -> packed little-endian int32 (4 bytes an id; decoded with one frombuffer)."""
    import numpy as np

    return np.asarray(sorted(set(int(i) for i in ids)), dtype="<i4").tobytes()


def decode_ids(raw: bytes | None) -> set[int]:
    import numpy as np

    return set(np.frombuffer(raw, dtype="<i4").tolist()) if raw else set()


def encode_history(events: Iterable[tuple[int, float, int]]) -> str:
    """``[[movie,rating,ts],...]``: the bytes ``json.dumps(..., separators=(",", ":"))`` gives, built
    directly (the stream job encodes one per user and flush: about 4x cheaper; a test pins the equality)."""
    parts = []
    for m, r, t in events:
        r = float(r)
        parts.append(f"[{int(m)},{r!r},{int(t)}]" if math.isfinite(r) else _json([int(m), r, int(t)]))
    return "[" + ",".join(parts) + "]"


def decode_history(raw: bytes | str | None) -> list[tuple[int, float, int]]:
    if not raw:
        return []
    return [(int(m), float(r), int(t)) for m, r, t in json.loads(raw)]


def _json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, with the common scalars done without the encoder
    (same text: JSON's ints and finite floats are Python's repr)."""
    kind = type(value)
    if kind is int:
        return repr(value)
    if kind is float and math.isfinite(value):
        return repr(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"))


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Feature hash: each field's value as JSON (types survive the round trip)."""
    return {k: _json(v) for k, v in fields.items()}


def decode_fields(raw: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

"""Publish: load one batch version's features and recall lists into Redis, then switch.

Every publish writes under a fresh Redis version (``<batch version>.<n>``), writes a
manifest last, and then switches ``current`` in one command. Readers resolve
``current`` first and read only that version, so they see the old publish or the
new one, never a mix. Versions beyond ``publish.keep_versions`` (at least 2, so a
reader that resolved the previous version still finds its keys) are deleted after
the switch.

Safe for retries and crashes:

* the publish lock is a :class:`pipeline.lease.RedisLease`: released by
  compare-and-delete, renewed while a long publish runs, and carrying a fencing token
  (the ``<n>`` of the version) that the switch checks atomically, so a publisher that
  lost its lock can never switch ``current``;
* the version is registered in ``building`` *before* any of its keys is written; a
  failed publish removes its keys, and a killed one (no chance to clean up) is
  removed by the next publish, which holds the lock and so knows the registered
  writer is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable, Iterable

import redis

from pipeline import keys as K
from pipeline.config import Config
from pipeline.lease import LeaseError, RedisLease
from pipeline.home import Home, table_path
from spark_jobs.session import read_table


class PublishError(RuntimeError):
    pass


class _Writer:
    """Buffers commands into pipelines of ``size`` and counts what it wrote."""

    def __init__(self, client: redis.Redis, size: int, check: Callable[[], None]) -> None:
        self.pipe = client.pipeline(transaction=False)
        self.size, self.pending, self.written, self.check = size, 0, 0, check

    def add(self, fn: Callable[[Any], Any]) -> None:
        fn(self.pipe)
        self.pending += 1
        if self.pending >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.check()  # a writer that lost its lease stops writing
            self.pipe.execute()
            self.written += self.pending
            self.pending = 0


def _finite(value: Any) -> Any:
    """NaN (a movie nobody rated has no mean) is stored as null: JSON has no NaN."""
    return None if isinstance(value, float) and value != value else value


def _rows(df) -> Iterable:  # noqa: ANN001
    return df.toLocalIterator(prefetchPartitions=True)


def delete_version(client: redis.Redis, keys: K.Keys, version: str, batch: int = 1000) -> int:
    """Remove every key of one published version; returns how many were deleted."""
    n, chunk = 0, []
    for key in client.scan_iter(match=keys.version_prefix(version) + "*", count=batch):
        chunk.append(key)
        if len(chunk) >= batch:
            n += client.unlink(*chunk)
            chunk = []
    if chunk:
        n += client.unlink(*chunk)
    return n


# KEYS[1] lock (RedisLease), KEYS[2] current, KEYS[3] versions, KEYS[4] building;
# ARGV[1] lease value, ARGV[2] version, ARGV[3] time. The switch, fenced by the lease.
_SWITCH = """
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""


def _clear_abandoned(client: redis.Redis, keys: K.Keys) -> list[str]:
    """Delete versions a killed publish registered as building (call only while holding the lock)."""
    abandoned = [v.decode() for v in client.hkeys(keys.publish_building())]
    for v in abandoned:
        delete_version(client, keys, v)
        client.hdel(keys.publish_building(), v)
    return abandoned


def publish(spark, cfg: Config, batch_version: str, client: redis.Redis,  # noqa: ANN001
            on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    home = Home(cfg.home)
    keys = K.Keys(cfg.redis.key_prefix)
    lease = RedisLease(client, keys.publish_lock(), keys.publish_seq(), ttl=cfg.publish.lock_seconds,
                       owner=f"{batch_version}@{socket.gethostname()}:{os.getpid()}")
    try:
        lease.acquire()
    except LeaseError as exc:
        raise PublishError(f"another publish is running: {exc}; wait for it (a killed one's lock expires by "
                           "itself within publish.lock_seconds)") from None
    counts: dict[str, int] = {}
    try:
        abandoned = _clear_abandoned(client, keys)
        version = f"{batch_version}.{lease.token}"
        client.hset(keys.publish_building(), version, lease.value)  # registered before any key is written
        try:
            w = _Writer(client, cfg.publish.pipeline_size, lease.check)
            _write_version(spark, cfg, home, keys, batch_version, version, w, counts, on_progress)
            # The switch: current, versions and building in one fenced script.
            lease.fenced_eval(_SWITCH, [keys.current(), keys.versions(), keys.publish_building()],
                              [version, time.time()])
        except BaseException:
            delete_version(client, keys, version)
            client.hdel(keys.publish_building(), version)
            raise
        removed = cleanup(client, keys, cfg.publish.keep_versions)
    finally:
        lease.release()
    return {"publish_version": version, "keys_written": w.written, "rows": counts, "versions_removed": removed,
            "abandoned_removed": abandoned, "fencing_token": lease.token}


def _write_version(spark, cfg: Config, home: Home, keys: K.Keys, batch_version: str, version: str,  # noqa: ANN001
                   w: _Writer, counts: dict[str, int], on_progress: Callable[[str], None] | None) -> None:
    """Write every key of ``version`` from the batch tables, the manifest last."""

    def step(name: str, rows: Iterable, write: Callable[[Any, Any], None]) -> None:
        if on_progress:
            on_progress(f"publish {name}")
        n = 0
        for row in rows:
            w.add(lambda p, row=row: write(p, row))
            n += 1
        counts[name] = n

    uf = read_table(spark, table_path(home, version=batch_version, name="user_features"))

    def write_user(p, r) -> None:  # noqa: ANN001
        fields = {"n_ratings": r["n_ratings"], "mean_rating": r["mean_rating"], "std_rating": r["std_rating"],
                  "first_ts": r["first_ts"], "last_ts": r["last_ts"],
                  "genre_affinity": json.loads(r["genre_affinity"]), "top_genres": list(r["top_genres"] or []),
                  "gender": r["gender"], "age": r["age"], "age_bucket": r["age_bucket"],
                  "occupation": r["occupation"], "zip": r["zip"]}
        p.hset(keys.user(version, r["user_id"]), mapping=K.encode_fields(fields))
        p.set(keys.user_history(version, r["user_id"]), r["history"])
        p.set(keys.user_seen(version, r["user_id"]), K.encode_ids(r["seen"] or []))

    step("users", _rows(uf), write_user)

    mf = read_table(spark, table_path(home, batch_version, "movie_features"))
    movie_ids: list[int] = []
    listed_ids: list[int] = []

    def write_movie(p, r) -> None:  # noqa: ANN001
        fields = {c: _finite(r[c]) for c in ("title", "year", "decade", "n_ratings", "mean_rating", "std_rating",
                                    "bayes_rating", "popularity", "in_catalog")}
        fields["genres"] = list(r["genres"] or [])
        fields["title_tokens"] = list(r["title_tokens"] or [])
        p.hset(keys.movie(version, r["movie_id"]), mapping=K.encode_fields(fields))
        listed_ids.append(int(r["movie_id"]))
        if r["in_catalog"]:
            movie_ids.append(int(r["movie_id"]))

    step("movies", _rows(mf), write_movie)
    w.add(lambda p: p.set(keys.movie_ids(version), json.dumps(sorted(movie_ids))))
    w.add(lambda p: p.set(keys.listed_movie_ids(version), json.dumps(sorted(listed_ids))))

    step("als", _rows(read_table(spark, table_path(home, batch_version, "recall_als"))),
         lambda p, r: p.set(keys.user_list(version, "als", r["user_id"]), K.encode_scored(zip(r["items"], r["scores"]))))
    for name, table in (("similar", "recall_similar"), ("next", "recall_next")):
        step(name, _rows(read_table(spark, table_path(home, batch_version, table))),
             lambda p, r, name=name: p.set(keys.item_list(version, name, r["movie_id"]),
                                           K.encode_scored(zip(r["items"], r["scores"]))))
    step("lists", _rows(read_table(spark, table_path(home, batch_version, "recall_lists"))),
         lambda p, r: p.set(keys.global_list(version, r["name"]), K.encode_scored(zip(r["items"], r["scores"]))))
    manifest = home.read_manifest(batch_version)
    meta = {"batch_version": batch_version, "publish_version": version, "split": cfg.data.split,
            "published_at": time.time(), "counts": counts, "data": manifest.get("data")}
    w.add(lambda p: p.hset(keys.manifest(version), mapping=K.encode_fields(meta)))
    w.flush()


def cleanup(client: redis.Redis, keys: K.Keys, keep: int) -> list[str]:
    """Delete published versions older than the newest ``keep`` (never the current one)."""
    current = (client.get(keys.current()) or b"").decode()
    versions = [v.decode() for v in client.zrange(keys.versions(), 0, -1)]
    old = [v for v in versions[:-keep] if v != current] if keep < len(versions) else []
    for v in old:
        delete_version(client, keys, v)
        client.zrem(keys.versions(), v)
    return old


def run(spark, cfg: Config, version: str) -> dict[str, Any]:  # noqa: ANN001
    from pipeline.redis_server import redis_for_home

    with redis_for_home(cfg) as url:
        client = redis.Redis.from_url(url)
        try:
            return publish(spark, cfg, version, client)
        finally:
            client.close()

"""Publishing to Redis: readers never see half a publish; reruns are idempotent; a
serving-mode (split=none) build end to end (real Spark, real Redis)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import redis

from pipeline import keys as K
from pipeline.home import Home, table_path
from spark_jobs.publish import cleanup, publish
from tests.conftest import make_config

pytestmark = [pytest.mark.spark, pytest.mark.redis]


def test_reader_never_sees_a_mixed_or_partial_version(spark, p1_batch: dict, redis_srv) -> None:  # noqa: ANN001
    cfg = p1_batch["cfg"].replace("publish", keep_versions=2, pipeline_size=50)
    keys = K.Keys(cfg.redis.key_prefix)
    client = redis.Redis.from_url(redis_srv.url)
    users = pd.read_parquet(table_path(Home(cfg.home), p1_batch["version"], "user_features"), columns=["user_id"])
    user_ids = users["user_id"].tolist()[:20]
    problems: list[str] = []
    seen_versions: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        r = redis.Redis.from_url(redis_srv.url)
        while not stop.is_set():
            v = r.get(keys.current()).decode()
            pipe = r.pipeline(transaction=True)
            pipe.hget(keys.manifest(v), "publish_version")
            for u in user_ids:
                pipe.exists(keys.user(v, u), keys.user_history(v, u), keys.user_list(v, "als", u))
            pipe.get(keys.global_list(v, K.list_popular()))
            res = pipe.execute()
            seen_versions.add(v)
            if res[0] is None or K.decode_fields({"x": res[0]})["x"] != v:
                problems.append(f"{v}: manifest missing or wrong")
            if any(n != 3 for n in res[1:-1]) or not res[-1]:
                problems.append(f"{v}: keys missing")
        r.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        results = [publish(spark, cfg, p1_batch["version"], client) for _ in range(3)]
    finally:
        stop.set()
        t.join()
    assert not problems, problems[:5]
    published = [r["publish_version"] for r in results]
    assert client.get(keys.current()).decode() == published[-1]
    assert len(seen_versions) >= 2  # the reader really ran across switches
    # keep_versions=2: only the last two publishes remain, older ones fully deleted.
    remaining = {v.decode() for v in client.zrange(keys.versions(), 0, -1)}
    assert remaining == set(published[-2:])
    for old in [p1_batch["manifest"]["steps"]["publish"]["publish_version"], *published[:-2]]:
        assert not list(client.scan_iter(match=keys.version_prefix(old) + "*"))
    client.close()


def test_concurrent_publish_refused(spark, p1_batch: dict, redis_client: redis.Redis) -> None:  # noqa: ANN001
    from spark_jobs.publish import PublishError

    cfg = p1_batch["cfg"]
    keys = K.Keys(cfg.redis.key_prefix)
    redis_client.set(keys.publish_lock(), "someone-else", ex=60)
    before = redis_client.get(keys.current())
    try:
        with pytest.raises(PublishError, match="another publish"):
            publish(spark, cfg, p1_batch["version"], redis_client)
    finally:
        redis_client.delete(keys.publish_lock())
    assert redis_client.get(keys.current()) == before


def test_serving_build_rerun_is_idempotent(spark, small_data: Path, redis_srv, tmp_path: Path) -> None:  # noqa: ANN001
    from spark_jobs.batch import run_batch

    cfg = make_config(tmp_path / "home", redis_srv.url, publish={"keep_versions": 2})
    home = Home(cfg.home)
    first = run_batch(cfg, small_data)
    v1 = first["version"]
    inter = pd.read_parquet(table_path(home, v1, "interactions"))
    assert set(inter["split"]) == {"train", "val"}  # serving mode: last event only for early stopping
    assert (inter.groupby("user_id")["split"].apply(lambda s: (s == "val").sum()) == 1).all()
    snapshot = {t: pd.read_parquet(table_path(home, v1, t)) for t in ("recall_next", "recall_lists", "examples")}

    # Rerunning steps inside the same version replaces their outputs with identical ones.
    run_batch(cfg, None, steps=["recall", "samples"], version=v1)
    for name, before in snapshot.items():
        after = pd.read_parquet(table_path(home, v1, name))
        key = [c for c in ("user_id", "movie_id", "name", "pos") if c in before.columns]
        pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True),
                                      after.sort_values(key).reset_index(drop=True))
    assert home.current_version() == v1

    # A full rerun is a new version; keep_versions=2 keeps its predecessor on disk and in Redis
    # (pruning beyond it: test_prune_keeps_the_newest_complete_versions, test_reader_never_sees_...).
    second = run_batch(cfg, small_data)
    assert home.current_version() == second["version"] != v1
    assert home.version_dir(v1).exists()
    client = redis.Redis.from_url(redis_srv.url)
    keys = K.Keys(cfg.redis.key_prefix)
    live = client.get(keys.current()).decode()
    assert live.startswith(second["version"])
    published = [v.decode() for v in client.zrange(keys.versions(), 0, -1)]
    assert len(published) == 2 and published[-1] == live and published[0].startswith(v1)
    client.close()


def test_prune_keeps_the_newest_complete_versions(tmp_path: Path) -> None:
    from spark_jobs.batch import prune_versions

    home = Home(tmp_path / "home")
    for name, status in (("v1", "complete"), ("v2", "failed"), ("v3", "complete"), ("v4", "complete"),
                         ("v5", "building")):
        home.write_manifest(name, {"status": status})
    home.set_current_version("v4")
    assert sorted(prune_versions(home, keep=2)) == ["v1", "v2"]
    assert sorted(p.name for p in home.versions.iterdir()) == ["v3", "v4", "v5"]


def test_cleanup_never_deletes_current(redis_client: redis.Redis) -> None:
    keys = K.Keys("cleanup")
    for i, v in enumerate(["a.1", "b.2", "c.3"]):
        redis_client.zadd(keys.versions(), {v: i})
        redis_client.set(keys.manifest(v), "x")
    redis_client.set(keys.current(), "a.1")  # e.g. rolled back by hand
    removed = cleanup(redis_client, keys, keep=1)
    assert removed == ["b.2"]
    assert redis_client.exists(keys.manifest("a.1")) and redis_client.exists(keys.manifest("c.3"))

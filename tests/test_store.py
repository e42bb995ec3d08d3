"""The online store's two implementations answer alike: RedisStore over a real redis-server, InMemoryStore.

The same small publish is written to Redis in the layout ``spark_jobs/publish.py``
writes (its own tests check that the batch plane's publish reads back through
``RedisStore``) and held by an ``InMemoryStore``; every read the gateway makes must
give the same answer from both, so the gateway's unit tests against the in-memory
store stand for Redis. Both also fail the same way: ``NotPublished`` before a
publish, ``StoreUnavailable`` when the store cannot be reached.
"""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import redis

from pipeline import keys as K
from pipeline.redis_server import free_port
from pipeline.store import InMemoryStore, NotPublished, OnlineStore, PublishedVersion, RedisStore, StoreUnavailable

pytestmark = pytest.mark.redis

DATA = PublishedVersion(
    users={7: {"age_bucket": 25, "gender": "F", "top_genres": ["Comedy"], "n_ratings": 3, "mean_rating": 4.0}},
    histories={7: [(1, 5.0, 100), (2, 4.0, 200), (5, 3.0, 300)]},
    seen={7: {1, 2, 5, 9}},
    user_lists={"als": {7: [(3, 0.9), (6, 0.8)]}},
    item_lists={"next": {5: [(6, 1.0), (7, 0.5)]}, "similar": {2: [(3, 1.0)]}},
    global_lists={K.list_popular(): [(1, 99.0), (2, 98.0)], K.list_popular("Drama"): [(9, 5.0)]},
    movies={m: {"title": f"Movie {m}", "genres": ["Drama"], "year": 1990 + m, "n_ratings": 10} for m in range(1, 10)})
ONLINE_HISTORY = {7: [(2, 4.0, 200), (8, 5.0, 400)]}  # (2, 200) is also in the batch history
ONLINE_USER = {7: {"n_ratings": 2, "mean_rating": 4.5}}
TRENDING = [(8, 3.0), (4, 7.0), (6, 1.0)]


def write(client: redis.Redis, keys: K.Keys, version: str, data: PublishedVersion) -> None:
    """``data`` in the layout of pipeline/KEYS.md, then ``current`` switched to ``version``."""
    pipe = client.pipeline(transaction=False)
    for uid, fields in data.users.items():
        pipe.hset(keys.user(version, uid), mapping=K.encode_fields(fields))
        pipe.set(keys.user_history(version, uid), K.encode_history(data.histories.get(uid, [])))
        pipe.set(keys.user_seen(version, uid), K.encode_ids(data.seen.get(uid, set())))
    for name, lists in data.user_lists.items():
        for uid, items in lists.items():
            pipe.set(keys.user_list(version, name, uid), K.encode_scored(items))
    for name, lists in data.item_lists.items():
        for mid, items in lists.items():
            pipe.set(keys.item_list(version, name, mid), K.encode_scored(items))
    for name, items in data.global_lists.items():
        pipe.set(keys.global_list(version, name), K.encode_scored(items))
    for mid, fields in data.movies.items():
        pipe.hset(keys.movie(version, mid), mapping=K.encode_fields(fields))
    pipe.set(keys.movie_ids(version), json.dumps(sorted(data.movies)))
    for uid, history in ONLINE_HISTORY.items():
        pipe.set(keys.online_history(uid), K.encode_history(history))
    for uid, fields in ONLINE_USER.items():
        pipe.hset(keys.online_user(uid), mapping=K.encode_fields(fields))
    for mid, count in TRENDING:
        pipe.zadd(keys.trending(), {str(mid): count})
    pipe.set(keys.current(), version)
    pipe.execute()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest, redis_client: redis.Redis) -> Iterator[OnlineStore]:
    if request.param == "memory":
        yield InMemoryStore({"v1": DATA}, current="v1", online_histories=ONLINE_HISTORY, online_users=ONLINE_USER,
                            trending=TRENDING)
        return
    prefix = f"store{id(request)}"
    write(redis_client, K.Keys(prefix), "v1", DATA)
    yield RedisStore(redis_client, prefix)
    RedisStore(redis_client, prefix).clear_online()


def test_user_context_merges_batch_and_stream(store: OnlineStore) -> None:
    ctx, feats = store.user_context(7)
    assert ctx.history == [(1, 5.0, 100), (2, 4.0, 200), (5, 3.0, 300), (8, 5.0, 400)]
    assert ctx.exclude == {1, 2, 5, 8, 9}
    assert (ctx.age_bucket, ctx.gender, ctx.top_genres) == (25, "F", ["Comedy"])
    assert feats["n_ratings"] == 3 and feats["online"] == {"n_ratings": 2, "mean_rating": 4.5}
    short, _ = store.user_context(7, history_len=2)
    assert short.history == [(5, 3.0, 300), (8, 5.0, 400)]
    assert ctx.user_lists == {"als": [(3, 0.9), (6, 0.8)]}  # read in the same round trip
    unknown, feats = store.user_context(404)
    assert unknown.is_cold and unknown.exclude == set() and feats == {} and unknown.user_lists == {"als": []}


def test_lists_trending_and_movies(store: OnlineStore) -> None:
    assert store.current_version() == store.version == "v1"
    assert store.user_list("als", 7) == [(3, 0.9), (6, 0.8)] and store.user_list("als", 404) == []
    assert store.item_lists("next", [5, 404]) == {5: [(6, 1.0), (7, 0.5)], 404: []}
    assert store.global_list(K.list_popular("Drama")) == [(9, 5.0)] and store.global_list("nothing") == []
    assert store.trending(2) == [(4, 7.0), (8, 3.0)]
    movies = store.movie_features()
    assert sorted(movies) == list(range(1, 10)) and movies[3]["title"] == "Movie 3" and movies[3]["year"] == 1993
    assert store.at_version("v1").user_list("als", 7) == [(3, 0.9), (6, 0.8)]
    assert store.at_version("v0").user_list("als", 7) == []


def test_not_published_and_unreachable(redis_client: redis.Redis) -> None:
    for empty in (InMemoryStore(), RedisStore(redis_client, "never-published")):
        with pytest.raises(NotPublished):
            empty.current_version()
    down = InMemoryStore({"v1": DATA}, current="v1")
    down.down = True
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    for store in (down, RedisStore(gone, "rs", version="v1")):
        with pytest.raises(StoreUnavailable):
            store.user_context(7)
        with pytest.raises(StoreUnavailable):
            store.current_version()
    gone.close()


class CountingRedis(redis.Redis):
    """A real client that counts round trips: one per plain command, one per pipeline execute."""

    trips = 0

    def execute_command(self, *args, **options):  # noqa: ANN001, ANN002, ANN003, ANN201
        CountingRedis.trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: object = None):  # noqa: ANN201
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            CountingRedis.trips += 1
            return execute(*a, **kw)

        pipe.execute = counted
        return pipe


def test_a_warm_recommend_reads_redis_in_one_round_trip(redis_client: redis.Redis, tmp_path) -> None:  # noqa: ANN001
    """The real gateway over RedisStore: after one warm-up call (global and per-movie lists cached for the
    version, trending for a second), a Recommend's features, history, seen set and ALS list come in one
    pipelined round trip."""
    from pipeline.config import load_config
    from serving.gateway import Gateway
    from tests.test_gateway_unit import ScriptedRanking

    prefix = "roundtrip"
    write(redis_client, K.Keys(prefix), "v1", DATA)
    kwargs = redis_client.connection_pool.connection_kwargs
    client = CountingRedis(host=kwargs.get("host", "127.0.0.1"), port=kwargs["port"], password=kwargs.get("password"))
    cfg = load_config(home=tmp_path, environ={}, overrides={"serving": {"version_check_seconds": 3600.0,
                                                                         "model_recall": 0},
                                                             "redis": {"key_prefix": prefix}})
    gateway = Gateway(cfg, RedisStore(client, prefix), ScriptedRanking({m: m / 10 for m in range(1, 10)}), None)  # type: ignore[arg-type]
    try:
        first = gateway.recommend(7, k=3)
        CountingRedis.trips = 0
        again = gateway.recommend(7, k=3)
        assert CountingRedis.trips == 1
        assert [i.movie_id for i in again.items] == [i.movie_id for i in first.items] and not again.degraded
        assert "als" in {s for i in again.items for s in i.sources}
    finally:
        RedisStore(redis_client, prefix).clear_online()
        client.close()

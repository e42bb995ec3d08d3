"""The gateway end to end over real gRPC and HTTP on loopback, with a real Redis holding a
real P1 publish and the project's model server (a child process) serving a real exported
ranker. Degraded modes are produced by really killing the model server or a Redis."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
import redis

from pipeline import keys as K
from pipeline.events import parse_event, read_spool
from pipeline.redis_server import start_redis
from serving.app import start_gateway
from serving.protos.recsys.v1 import recommender_pb2 as pb
from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.spark, pytest.mark.tf, pytest.mark.redis]


def copy_version(src: Path, base: Path, version: int) -> Path:
    """Place a model version the way an export does: copy under a dot-name, then rename."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    final = base / str(version)
    tmp.rename(final)
    return final


def spawn(base: Path, port: int = 0) -> Any:
    from serving.model_server import spawn_model_server

    return spawn_model_server(base, "ranker", port=port, poll_seconds=0.3)


def gateway_config(p1_batch: dict, tmp: Path, redis_url: str | None = None) -> Any:
    cfg = p1_batch["cfg"]
    cfg = cfg.replace("serving", bind="127.0.0.1", grpc_port=0, http_port=0, model_timeout_ms=3000,
                      version_check_seconds=0.2)
    cfg = cfg.replace("events", spool_dir=str(tmp / "spool"), roll_seconds=0.2)
    return cfg.replace("redis", url=redis_url) if redis_url else cfg


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, every: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def model_srv(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("models") / "ranker"
    copy_version(exported_model / "1", base, 1)
    handle = spawn(base)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def gw(p1_batch: dict, model_srv: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = gateway_config(p1_batch, tmp_path_factory.mktemp("gw"))
    running = start_gateway(cfg, cfg.redis.url, f"127.0.0.1:{model_srv.port}")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(gw: Any) -> Any:
    channel = grpc.insecure_channel(gw.grpc_target)
    yield pb_grpc.RecommenderStub(channel)
    channel.close()


def _users(p1_batch: dict, redis_client: redis.Redis, n: int = 5) -> list[int]:
    keys = K.Keys(p1_batch["cfg"].redis.key_prefix)
    version = redis_client.get(keys.current()).decode()
    ids = []
    for key in redis_client.scan_iter(match=keys.user(version, 0)[:-1] + "*", count=500):
        ids.append(int(key.decode().rsplit(":", 1)[1]))
    return sorted(ids)[:n]


def _seen(p1_batch: dict, redis_client: redis.Redis, user_id: int) -> set[int]:
    keys = K.Keys(p1_batch["cfg"].redis.key_prefix)
    version = redis_client.get(keys.current()).decode()
    return K.decode_ids(redis_client.get(keys.user_seen(version, user_id))) | \
        {m for m, _, _ in K.decode_history(redis_client.get(keys.user_history(version, user_id)))}


def test_recommend_ranks_unseen_movies_with_reasons(stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    for user_id in _users(p1_batch, redis_client):
        resp = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10)
        ids = [i.movie_id for i in resp.items]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert not set(ids) & _seen(p1_batch, redis_client, user_id)      # seen movies never returned
        assert resp.model_version == "1" and not resp.degraded and not resp.cold_start
        assert resp.batch_version
        for item in resp.items:
            assert item.title and item.reason and item.sources
            assert 0.0 <= item.predicted_rating <= 5.0 and 0.0 <= item.score <= 1.0
        assert any(i.reason.startswith("because you watched") for i in resp.items)


def test_in_process_model_server_answers_as_the_child_does(stub: Any, p1_batch: dict, redis_client: redis.Redis,
                                                          exported_model: Path, tmp_path: Path) -> None:
    """``serving.model_server = "in-process"``: the embedded server inside the gateway, called without gRPC
    (``LocalStub``), answers what the child process answers (same export, same candidates, same scores), and a
    call the model server refuses comes back as the status a gRPC client sees."""
    import dataclasses

    import numpy as np

    from serving.ranking_client import IN_PROCESS, ModelUnavailable

    home = tmp_path / "home"
    copy_version(exported_model / "1", home / "models" / "ranker", 1)
    cfg = dataclasses.replace(gateway_config(p1_batch, tmp_path), home=home).replace("serving", model_server=IN_PROCESS)
    running = start_gateway(cfg, cfg.redis.url, IN_PROCESS)
    channel = grpc.insecure_channel(running.grpc_target)
    try:
        assert running.gateway.ranking.model_status() == "1" and running.gateway.ranking.channel is None
        local = pb_grpc.RecommenderStub(channel)
        for user_id in _users(p1_batch, redis_client, 3):
            child, inside = (s.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10) for s in (stub, local))
            assert [i.movie_id for i in inside.items] == [i.movie_id for i in child.items]
            np.testing.assert_allclose([i.score for i in inside.items], [i.score for i in child.items], rtol=1e-4)
            assert [i.reason for i in inside.items] == [i.reason for i in child.items]
            assert not inside.degraded and inside.model_version == "1"
        bad = {"hist_movie_ids": np.zeros((1, 3), np.int64)}  # the signature wants H columns
        req = running.gateway.ranking._request("next_movies", bad)
        with pytest.raises(grpc.RpcError) as refused:
            running.gateway.ranking.stub.Predict(req, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hist_movie_ids" in refused.value.details()
        with pytest.raises(ModelUnavailable, match="INVALID_ARGUMENT"):
            running.gateway.ranking.rank({"user_id": np.ones((1,), np.int64)}, timeout_s=5)
    finally:
        channel.close()
        running.stop()


def test_rank_scores_match_recommend_and_keep_the_order(stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    user_id = _users(p1_batch, redis_client)[0]
    rec = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5), timeout=10)
    ids = [i.movie_id for i in rec.items][::-1]
    ranked = stub.Rank(pb.RankRequest(user_id=user_id, movie_ids=ids), timeout=10)
    assert [i.movie_id for i in ranked.items] == ids and ranked.model_version == "1"
    by_id = {i.movie_id: i for i in rec.items}
    for item in ranked.items:
        assert item.score == pytest.approx(by_id[item.movie_id].score, abs=1e-5)
        assert item.predicted_rating == pytest.approx(by_id[item.movie_id].predicted_rating, abs=1e-4)


def test_genre_filter_and_unknown_user(stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    user_id = _users(p1_batch, redis_client)[1]
    resp = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, genres=["Comedy"]), timeout=10)
    assert resp.items and all("Comedy" in i.genres for i in resp.items)
    cold = stub.Recommend(pb.RecommendRequest(user_id=987654321, k=10), timeout=10)
    assert len(cold.items) == 10 and cold.cold_start and not cold.degraded
    assert all(i.reason for i in cold.items)


def test_similar_movies(stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    movie_id = stub.Recommend(pb.RecommendRequest(user_id=_users(p1_batch, redis_client)[0], k=1), timeout=10).items[0].movie_id
    resp = stub.SimilarMovies(pb.SimilarMoviesRequest(movie_id=movie_id, k=7), timeout=10)
    assert 0 < len(resp.items) <= 7 and movie_id not in [i.movie_id for i in resp.items]
    assert all(i.title for i in resp.items)


def test_rank_scores_listed_movies_the_filter_dropped(stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    """A movie the dataset lists but the 5-core filter dropped goes through the model's new-movie path."""
    keys = K.Keys(p1_batch["cfg"].redis.key_prefix)
    version = redis_client.get(keys.current()).decode()
    listed = set(json.loads(redis_client.get(keys.listed_movie_ids(version))))
    recommendable = set(json.loads(redis_client.get(keys.movie_ids(version))))
    dropped = sorted(listed - recommendable)
    assert dropped, "the synthetic data lists movies nobody rated"
    user_id = _users(p1_batch, redis_client)[0]
    ids = [dropped[0], sorted(recommendable)[0]]
    ranked = stub.Rank(pb.RankRequest(user_id=user_id, movie_ids=ids), timeout=10)
    assert [i.movie_id for i in ranked.items] == ids and not ranked.degraded
    assert ranked.items[0].title and 0.0 <= ranked.items[0].predicted_rating <= 5.0
    for user_id in _users(p1_batch, redis_client):                       # never recommended
        rec = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=20), timeout=10)
        assert not {i.movie_id for i in rec.items} - recommendable


@pytest.mark.parametrize("call, request_, code, words", [
    ("Recommend", pb.RecommendRequest(user_id=1, k=-1), grpc.StatusCode.INVALID_ARGUMENT, "k must be"),
    ("Recommend", pb.RecommendRequest(user_id=1, k=100000), grpc.StatusCode.INVALID_ARGUMENT, "k must be"),
    ("Recommend", pb.RecommendRequest(user_id=0), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
    ("Recommend", pb.RecommendRequest(user_id=1, genres=["Polka"]), grpc.StatusCode.INVALID_ARGUMENT, "Polka"),
    ("Rank", pb.RankRequest(user_id=1, movie_ids=[1, 99999991, 99999992, 99999991]), grpc.StatusCode.INVALID_ARGUMENT,
     "99999991, 99999992"),
    ("Rank", pb.RankRequest(user_id=1), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("SimilarMovies", pb.SimilarMoviesRequest(movie_id=99999991), grpc.StatusCode.NOT_FOUND, "99999991"),
    ("RecordRating", pb.RecordRatingRequest(user_id=1, movie_id=1, rating=7), grpc.StatusCode.INVALID_ARGUMENT, "rating"),
    ("RecordRating", pb.RecordRatingRequest(user_id=1, movie_id=0, rating=4), grpc.StatusCode.INVALID_ARGUMENT, "movie_id"),
])
def test_bad_inputs_get_the_right_status(stub: Any, call: str, request_: Any, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_, timeout=10)
    assert err.value.code() == code and words in err.value.details()


def test_record_rating_appends_to_the_spool(stub: Any, gw: Any) -> None:
    resp = stub.RecordRating(pb.RecordRatingRequest(user_id=3, movie_id=5, rating=4.5, timestamp=1_000_000_000), timeout=10)
    assert len(resp.event_id) >= 16
    spool = Path(gw.gateway.cfg.events.spool_dir)
    assert wait_for(lambda: any(resp.event_id in line for line in read_spool(spool)), timeout=10)
    event = next(parse_event(line) for line in read_spool(spool) if resp.event_id in line)
    assert (event.user_id, event.movie_id, event.rating, event.ts) == (3, 5, 4.5, 1_000_000_000)


def test_health_and_reflection(gw: Any) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(gw.grpc_target)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="recsys.v1.Recommender"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "recsys.v1.Recommender" in names and "grpc.health.v1.Health" in names
    channel.close()


def _http(gw: Any, path: str, body: dict | None = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gw.http_port}{path}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw.decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_mirror_health_and_metrics(gw: Any, stub: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    user_id = _users(p1_batch, redis_client)[2]
    code, body = _http(gw, "/api/recommend", {"user_id": user_id, "k": 5})
    via_grpc = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5), timeout=10)
    assert code == 200 and [i["movie_id"] for i in body["items"]] == [i.movie_id for i in via_grpc.items]
    code, body_get = _http(gw, f"/api/recommend?user_id={user_id}&k=5")
    assert code == 200 and body_get["items"] == body["items"]
    code, body = _http(gw, "/api/rank", {"user_id": user_id, "movie_ids": [1, 99999991]})
    assert code == 400 and "99999991" in body["error"]
    code, body = _http(gw, "/api/ratings", {"user_id": user_id, "movie_id": 1, "rating": "lots"})
    assert code == 400 and "rating" in body["error"]
    code, body = _http(gw, "/api/similar?movie_id=1&k=3")
    assert code in (200, 404)
    code, body = _http(gw, "/healthz")
    assert code == 200 and body["status"] == "ok" and body["model_version"] == "1"
    code, text = _http(gw, "/metrics")
    assert code == 200
    assert 'recsys_requests_total{code="OK",method="Recommend"}' in text
    assert 'recsys_requests_total{code="INVALID_ARGUMENT",method="Rank"}' in text
    assert 'recsys_stage_seconds_count{stage="rank"}' in text and "recsys_model_version 1.0" in text


def _loop_until(stub: Any, user_id: int, accept: Callable[[Any], bool], timeout: float = 60.0) -> list[Any]:
    """Call Recommend in a loop until ``accept(response)``; every call must succeed."""
    answers = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        answers.append(stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10))
        if accept(answers[-1]):
            return answers
        time.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout} s; last answer degraded={answers[-1].degraded} "
                         f"version={answers[-1].model_version!r}")


def test_model_server_new_version_kill_and_restart(exported_model: Path, p1_batch: dict, redis_client: redis.Redis,
                                                   tmp_path: Path) -> None:
    base = tmp_path / "models" / "ranker"
    copy_version(exported_model / "1", base, 1)
    server = spawn(base)
    cfg = gateway_config(p1_batch, tmp_path)
    running = start_gateway(cfg, cfg.redis.url, f"127.0.0.1:{server.port}")
    channel = grpc.insecure_channel(running.grpc_target)
    stub = pb_grpc.RecommenderStub(channel)
    user_id = _users(p1_batch, redis_client)[0]
    try:
        assert stub.Recommend(pb.RecommendRequest(user_id=user_id), timeout=10).model_version == "1"
        # A new version appears while a client loops: no failed or degraded answer, then version 2.
        copy_version(exported_model / "1", base, 2)
        answers = _loop_until(stub, user_id, lambda r: r.model_version == "2")
        assert not any(a.degraded for a in answers)
        # The model server dies: recall-order answers flagged degraded, never an error.
        port = server.port
        server.stop()
        down = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10)
        assert down.degraded and down.model_version == "" and len(down.items) == 10
        assert not {i.movie_id for i in down.items} & _seen(p1_batch, redis_client, user_id)
        # It comes back on the same port: the gateway recovers by itself.
        server = spawn(base, port=port)
        _loop_until(stub, user_id, lambda r: not r.degraded and r.model_version == "2")
    finally:
        channel.close()
        running.stop()
        server.stop()


def _copy_keys(src: redis.Redis, dst: redis.Redis, prefix: str) -> int:
    n = 0
    pipe = dst.pipeline(transaction=False)
    for key in src.scan_iter(match=f"{prefix}:*", count=1000):
        pipe.restore(key, 0, src.dump(key), replace=True)
        n += 1
    pipe.execute()
    return n


def test_redis_down_then_back(p1_batch: dict, model_srv: Any, redis_client: redis.Redis, tmp_path: Path) -> None:
    own = start_redis(tmp_path / "redis")
    copied = _copy_keys(redis_client, redis.Redis.from_url(own.url), p1_batch["cfg"].redis.key_prefix)
    assert copied > 100
    cfg = gateway_config(p1_batch, tmp_path, redis_url=own.url)
    running = start_gateway(cfg, own.url, f"127.0.0.1:{model_srv.port}")
    channel = grpc.insecure_channel(running.grpc_target)
    stub = pb_grpc.RecommenderStub(channel)
    user_id = _users(p1_batch, redis_client)[0]
    try:
        assert not stub.Recommend(pb.RecommendRequest(user_id=user_id), timeout=10).degraded
        port = own.port
        own.stop(save=True)
        time.sleep(0.5)  # past version_check_seconds: the next call must notice Redis is gone
        down = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10)
        assert down.degraded and len(down.items) == 10 and all(i.title for i in down.items)
        assert stub.SimilarMovies(pb.SimilarMoviesRequest(movie_id=down.items[0].movie_id, k=5), timeout=10).degraded
        own = start_redis(tmp_path / "redis", port=port)
        _loop_until(stub, user_id, lambda r: not r.degraded)
    finally:
        channel.close()
        running.stop()
        own.stop(save=False)


def test_http_rejects_undelimited_and_non_json_bodies(gw: Any) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.putrequest("POST", "/api/recommend")
    conn.endheaders()                                   # no Content-Length: cannot be delimited
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.request("POST", "/api/recommend", body=b"{not json", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "not JSON" in json.loads(resp.read())["error"]
    conn.request("POST", "/api/recommend", body=json.dumps({"user_id": 1e400}).encode(),  # still usable: keep-alive
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "user_id" in json.loads(resp.read())["error"]
    conn.close()


def test_an_expired_deadline_is_deadline_exceeded_not_degraded(gw: Any, p1_batch: dict, redis_client: redis.Redis) -> None:
    from serving.gateway import DeadlineExceeded

    user_id = _users(p1_batch, redis_client)[0]
    with pytest.raises(DeadlineExceeded):
        gw.gateway.recommend(user_id, 10, deadline=time.monotonic() - 1)


def test_rank_ids_is_used_when_exact_and_answers_like_the_full_request(gw: Any, p1_batch: dict, trained: dict,
                                                                       redis_client: redis.Redis) -> None:
    """Through the real model server: for the batch version the model was trained on, the gateway's ranking
    never builds the candidates' feature request (rank_ids); its scores equal serving_default's. For another
    batch version the full request answers."""
    import numpy as np

    from model.signature import build_request, build_user_request

    gateway = gw.gateway
    view = gateway.versions.view()
    user_id = _users(p1_batch, redis_client, 1)[0]
    ctx, feats = view.store.user_context(user_id, history_len=gateway.cfg.features.history_len)
    user = gateway._user_input(user_id, ctx, feats)
    from model.runs import load_run

    vocab = load_run(trained["run"])[1]  # movies the model knows (a new movie goes to serving_default)
    ids = [int(m) for m in vocab.movie.values if view.catalog.recommendable(int(m))][:50]
    assert len(ids) == 50
    built: list[int] = []

    def full() -> dict:
        built.append(1)
        return build_request(user, view.catalog.movie_inputs(ids), gateway.history_len, gateway.title_len)

    by_ids = gateway.ranking.rank_ids(build_user_request(user, gateway.history_len), np.asarray([ids]),
                                      K.batch_version_of(view.store.version), full, timeout_s=10)
    assert built == []
    plain = gateway.ranking.rank(full(), timeout_s=10)
    np.testing.assert_allclose(by_ids.score, plain.score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_ids.rating, plain.rating, rtol=1e-4, atol=1e-5)
    built.clear()
    other = gateway.ranking.rank_ids(build_user_request(user, gateway.history_len), np.asarray([ids]),
                                     "another-version", full, timeout_s=10)
    assert built == [1]
    np.testing.assert_allclose(other.score, plain.score, rtol=1e-5, atol=1e-6)

"""The gateway's transport edges over real gRPC and HTTP on loopback, against the in-memory store.

What the branch tests of ``tests/test_gateway_unit.py`` cannot show without a server: admission
(a call beyond the in-flight bound is refused at once: gRPC RESOURCE_EXHAUSTED, HTTP 429) and
gRPC health following whether any batch version is readable. The store and the model are the
unit tests' stand-ins (``InMemoryStore``, ``ScriptedRanking``); the transports are real.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.store import InMemoryStore
from serving.ranking_client import Ranking
from tests.test_gateway_unit import USER, ScriptedRanking, config, make_gateway, model, published, store  # noqa: F401


def hold_ranking(model: ScriptedRanking) -> tuple[threading.Event, threading.Event, Any]:
    """Make the model's rank block (``entered`` set) until ``release``; returns them and the original rank."""
    entered, release = threading.Event(), threading.Event()
    rank = model.rank

    def held_rank(request: dict[str, np.ndarray], timeout_s: float | None = None) -> Ranking:
        entered.set()
        release.wait(30)
        return rank(request, timeout_s)

    model.rank = held_rank  # type: ignore[method-assign]
    return entered, release, rank


def test_grpc_refuses_at_once_beyond_the_calls_in_flight(tmp_path: Path, store: InMemoryStore,
                                                         model: ScriptedRanking) -> None:
    """Real gRPC on loopback over the in-memory store: with one call held inside ranking, a second is
    RESOURCE_EXHAUSTED without waiting; once the first finishes, calls are admitted again."""
    import grpc

    from serving.grpc_api import start_grpc
    from serving.protos.recsys.v1 import recommender_pb2 as pb
    from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    entered, release, rank = hold_ranking(model)
    server, port = start_grpc(make_gateway(config(tmp_path), store, model), "127.0.0.1", 0, max_in_flight=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.RecommenderStub(channel)
    try:
        first = stub.Recommend.future(pb.RecommendRequest(user_id=USER, k=3), timeout=30)
        assert entered.wait(30)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(user_id=USER, k=3), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        assert len(first.result().items) == 3
        model.rank = rank  # type: ignore[method-assign]
        assert len(stub.Recommend(pb.RecommendRequest(user_id=USER, k=3), timeout=30).items) == 3
    finally:
        release.set()
        channel.close()
        server.stop(0)


def test_grpc_health_is_not_serving_until_a_version_is_readable(tmp_path: Path, model: ScriptedRanking,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real gRPC health on loopback: NOT_SERVING while nothing is published, SERVING once a version is, and
    still SERVING (degraded answers) when the store goes down after that."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import serving.grpc_api
    from serving.grpc_api import SERVICE_NAME, start_grpc

    monkeypatch.setattr(serving.grpc_api, "HEALTH_SECONDS", 0.05)  # re-checked often: the test needs no waiting
    empty = InMemoryStore()
    server, port = start_grpc(make_gateway(config(tmp_path, version_check_seconds=0.001), empty, model),
                              "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    S = health_pb2.HealthCheckResponse

    def status_becomes(want: int) -> bool:
        for _ in range(300):
            got = {health.Check(health_pb2.HealthCheckRequest(service=n), timeout=10).status for n in ("", SERVICE_NAME)}
            if got == {want}:
                return True
            threading.Event().wait(0.1)
        return False

    try:
        assert status_becomes(S.NOT_SERVING)
        empty.versions["v1"] = published()
        empty.current = "v1"
        assert status_becomes(S.SERVING)
        empty.down = True
        threading.Event().wait(0.3)  # several health checks (every 0.05 s here) with the store down
        assert status_becomes(S.SERVING)
    finally:
        channel.close()
        server.stop(0)


def test_http_api_refuses_at_once_beyond_the_calls_in_flight(tmp_path: Path, store: InMemoryStore,
                                                              model: ScriptedRanking) -> None:
    """Real uvicorn on loopback over the in-memory store: with one /api call held inside ranking, a second
    is 429 (retry-after) without waiting; once the first finishes, calls are admitted again."""
    import json
    import urllib.error
    import urllib.request

    from serving.web.app import build_app
    from serving.web.server import start_http

    entered, release, rank = hold_ranking(model)
    cfg = config(tmp_path, http_max_in_flight=1)
    app = build_app(make_gateway(cfg, store, model))
    server = start_http(app, "127.0.0.1", 0, cfg.serving)
    url = f"http://127.0.0.1:{server.port}/api/recommend?user_id={USER}&k=3"
    got: dict[str, Any] = {}
    first = threading.Thread(target=lambda: got.update(first=json.load(urllib.request.urlopen(url, timeout=30))))
    try:
        first.start()
        assert entered.wait(30)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=30)
        assert err.value.code == 429 and err.value.headers["retry-after"] == "1"
        assert json.load(err.value)["code"] == "RESOURCE_EXHAUSTED"
        release.set()
        first.join(30)
        assert len(got["first"]["items"]) == 3
        model.rank = rank  # type: ignore[method-assign]
        assert len(json.load(urllib.request.urlopen(url, timeout=30))["items"]) == 3
    finally:
        release.set()
        server.stop()
        app.accounts.close()

"""Overload and failure units: the model server's batcher drops requests whose caller stopped waiting, and
the gateway's circuit breaker stops calling a failing model server for a while.

Pure logic over a stand-in servable (the batcher) and a fake clock (the breaker), plus real gRPC on
loopback for the ranking client against a port nothing listens on. The whole model server with a real
SavedModel is ``tests/test_model_server.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest

from serving.model_server.batching import Batcher
from serving.model_server.signature import ServingError, Signature
from serving.ranking_client import Breaker, ModelUnavailable, RankingClient
from tests.conftest import Clock


class HeldServable:
    """Stands in for a loaded SavedModel (no TensorFlow here): records each call; the first one is held."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def run(self, sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append([int(v) for v in inputs["x"][:, 0]])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return {"y": inputs["x"] * 2}


SIG = Signature(name="serving_default", fn=None, inputs={"x": (9, (-1, -1))}, outputs={"y": (9, (-1, -1))},
                tf_dtypes={}, padded_inputs=("x",), padded_outputs=("y",))


def test_the_batcher_does_not_compute_a_request_whose_deadline_passed() -> None:
    batcher, servable = Batcher(max_batch=4, timeout_s=0.001), HeldServable()
    results: dict[str, object] = {}

    def call(name: str, value: int, deadline: float | None) -> None:
        ticket = batcher.arrive(deadline)
        x = {"x": np.array([[value]], np.int64)}
        try:
            results[name] = batcher.run(ticket, batcher.key_for(servable, SIG, x), servable, SIG, x)  # type: ignore[arg-type]
        except ServingError as exc:
            results[name] = exc
        finally:
            batcher.leave(ticket)

    try:
        first = threading.Thread(target=call, args=("first", 1, None))
        first.start()
        assert servable.entered.wait(30)  # the batch thread is busy with the first request
        expiring = threading.Thread(target=call, args=("expiring", 2, time.monotonic() + 0.05))
        patient = threading.Thread(target=call, args=("patient", 3, time.monotonic() + 60))
        expiring.start()
        patient.start()
        time.sleep(0.2)  # the second request's caller gives up while it waits behind the first
        servable.release.set()
        for t in (first, expiring, patient):
            t.join(30)
        assert isinstance(results["expiring"], ServingError)
        assert results["expiring"].code == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
        assert results["patient"]["y"].tolist() == [[6]] and results["first"]["y"].tolist() == [[2]]  # type: ignore[index]
        assert [2] not in servable.calls and batcher.stats["expired"] == 1
        with pytest.raises(ServingError, match="deadline"):  # a request that arrives expired runs nowhere
            batcher.run_alone(servable, SIG, {"x": np.array([[4]], np.int64)}, time.monotonic() - 1)  # type: ignore[arg-type]
        assert [4] not in servable.calls
    finally:
        servable.release.set()
        batcher.stop()


def test_the_breaker_opens_after_failures_in_a_row_and_one_trial_closes_it() -> None:
    clock = Clock()
    b = Breaker(3, 1.0, clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success in between resets the count
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow() and b.opened == 1
    clock.now += 1.01
    assert b.state == "half-open"
    assert b.allow() and not b.allow()  # one trial only
    b.failure()                          # the trial failed: open again for another second
    assert b.state == "open" and not b.allow() and b.opened == 2
    clock.now += 1.01
    assert b.allow()
    b.release()                          # the trial proved nothing (the caller's deadline): next asker tries
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()
    off = Breaker(0, 1.0, clock)
    for _ in range(10):
        off.failure()
    assert off.allow() and off.state == "closed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_open_breaker_answers_without_calling_the_model_server() -> None:
    """Real gRPC to a port nothing listens on: two UNAVAILABLE calls open the breaker, the third fails at
    once without reaching the network; the refusal names the open circuit."""
    from model.signature import SIGNATURE_NAME  # noqa: F401 - the client's import path, no TensorFlow needed

    client = RankingClient(f"127.0.0.1:{free_port()}", "ranker", 2.0, Breaker(2, 60.0))
    calls = []
    predict = client.stub.Predict

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return predict(*args, **kwargs)

    client.stub.Predict = counted  # type: ignore[method-assign]
    request = {"movie_ids": np.array([[1, 2]], np.int64)}
    try:
        for _ in range(2):
            with pytest.raises(ModelUnavailable, match="UNAVAILABLE"):
                client.rank(request)
        with pytest.raises(ModelUnavailable, match="circuit open"):
            client.rank(request)
        with pytest.raises(ModelUnavailable, match="circuit open"):
            client.next_movies([1, 2], 5)
        assert len(calls) == 2 and client.breaker.state == "open"
    finally:
        client.close()

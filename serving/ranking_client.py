"""The gateway's client of the model server, through ``tensorflow_serving.apis`` stubs only.

Whatever answers at ``serving.model_server`` (the project's embedded server or a real
TensorFlow Serving) gets the same ``PredictRequest``: the raw inputs of
``model.signature`` for one user and a batch of candidates, with a deadline. Any
failure (down, slow, wrong model) becomes ``ModelUnavailable``, which the gateway
answers with the recall order (``degraded``). The gRPC channel reconnects by itself
with a short backoff, so a restarted model server is used again without a gateway
restart.

A circuit breaker sits in front of the stub: after ``failures`` failed calls in a row it
opens, and for ``open_seconds`` every call fails at once (``ModelUnavailable``, no network
wait), so a slow or dead model server costs each request nothing instead of its full
model timeout; then one trial call is let through, and its success closes the breaker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import numpy as np

from model.signature import NEXT_MOVIES_SIGNATURE, SIGNATURE_NAME
from model.vocab import left_pad


class ModelUnavailable(RuntimeError):
    """The model server did not answer in time or answered with an error."""


@dataclass
class Ranking:
    score: np.ndarray      # [N]
    rating: np.ndarray     # [N]
    attention: np.ndarray  # [N, H]
    model_version: str


# Reconnect quickly after the model server comes back (defaults back off up to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


# Answers that say the model server itself cannot serve (they count towards opening the breaker).
BREAKER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.UNKNOWN)


class Breaker:
    """closed -> (``failures`` failures in a row) -> open -> (``open_seconds``) -> half-open: one trial call.

    The trial's success closes it; its failure opens it again for another ``open_seconds``.
    ``failures`` <= 0 disables the breaker (every call goes through).
    """

    def __init__(self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.open_seconds, self.clock = int(failures), float(open_seconds), clock
        self._lock = threading.Lock()
        self._failed = 0
        self._open_until: float | None = None  # None = closed
        self._trial = False                    # a half-open trial call is out
        self.opened = 0                        # times it opened (metrics, tests)

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self.clock() < self._open_until or self._trial else "half-open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only the first asker gets True (the trial)."""
        if self.failures <= 0:
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._trial or self.clock() < self._open_until:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failed, self._open_until, self._trial = 0, None, False

    def release(self) -> None:
        """A call that proved nothing (the caller's own deadline ran out): a half-open trial slot is freed."""
        with self._lock:
            self._trial = False

    def failure(self) -> None:
        if self.failures <= 0:
            return
        with self._lock:
            self._failed += 1
            if self._trial or self._failed >= self.failures:
                if self._open_until is None or self._trial:
                    self.opened += 1
                self._open_until, self._trial = self.clock() + self.open_seconds, False


class RankingClient:
    def __init__(self, target: str, model_name: str, timeout_s: float, breaker: Breaker | None = None) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target, self.model_name, self.timeout_s = target, model_name, timeout_s
        self.breaker = breaker or Breaker(0, 0.0)
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _predict(self, req: Any, timeout_s: float | None) -> Any:
        """One Predict through the breaker; ``grpc.RpcError`` passes through (each caller maps it).

        What counts against the model server: no connection, refusal (overload), an internal error, or missing
        its own full timeout. A caller's short remaining deadline running out does not: one impatient caller
        must not open the breaker for everyone.
        """
        if not self.breaker.allow():
            raise ModelUnavailable(f"model server {self.target}: circuit open after repeated failures; "
                                   f"retrying in at most {self.breaker.open_seconds:g} s")
        timeout = min(self.timeout_s, timeout_s or self.timeout_s)
        try:
            resp = self.stub.Predict(req, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in BREAKER_CODES or (code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout >= self.timeout_s):
                self.breaker.failure()
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.breaker.release()  # only the caller's short budget ran out: says nothing either way
            else:
                self.breaker.success()  # it answered (an error about this request): the server is alive
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.success()
        return resp

    def rank(self, request: dict[str, np.ndarray], timeout_s: float | None = None) -> Ranking:
        """One Predict call for B = 1 user and N candidates."""
        from tensorflow_serving.apis import model_pb2, predict_pb2

        from serving.tensors import from_tensor_proto, to_tensor_proto

        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=self.model_name,
                                                                         signature_name=SIGNATURE_NAME))
        for name, value in request.items():
            req.inputs[name].CopyFrom(to_tensor_proto(value))
        try:
            resp = self._predict(req, timeout_s)
        except grpc.RpcError as exc:
            raise ModelUnavailable(f"model server {self.target}: {exc.code().name}: {exc.details()}") from None
        version = str(resp.model_spec.version.value) if resp.model_spec.HasField("version") else ""
        n = request["movie_ids"].shape[1]
        try:
            out = {k: from_tensor_proto(v) for k, v in resp.outputs.items()}
            # TF Serving's batcher with pad_variable_length_inputs returns rows padded to the largest N of the batch.
            ranking = Ranking(score=out["score"][0][:n], rating=out["rating"][0][:n],
                              attention=out["attention"][0][:n], model_version=version)
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside the signature: {exc!r}") from None
        if len(ranking.score) != n or len(ranking.rating) != n or ranking.attention.ndim != 2:
            raise ModelUnavailable(f"model server {self.target} answered {len(ranking.score)} scores for {n} candidates")
        return ranking

    def next_movies(self, history: list[int], history_len: int, timeout_s: float | None = None) -> list[tuple[int, float]]:
        """The model's ``next_movies`` signature for one history: (movie id, log-probability), best first.

        An export without that signature (trained without the sequence model) answers [] - the channel is simply
        absent; a model server that is down raises ModelUnavailable like ``rank``.
        """
        from tensorflow_serving.apis import model_pb2, predict_pb2

        from serving.tensors import from_tensor_proto, to_tensor_proto

        hist = left_pad([history], history_len, np.int64)
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=self.model_name,
                                                                         signature_name=NEXT_MOVIES_SIGNATURE))
        req.inputs["hist_movie_ids"].CopyFrom(to_tensor_proto(hist))
        try:
            resp = self._predict(req, timeout_s)
        except grpc.RpcError as exc:
            if _is_missing_signature(exc):
                return []
            raise ModelUnavailable(f"model server {self.target}: {exc.code().name}: {exc.details()}") from None
        try:
            ids = from_tensor_proto(resp.outputs["movie_ids"])[0]
            logp = from_tensor_proto(resp.outputs["log_prob"])[0]
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside next_movies: {exc!r}") from None
        return [(int(m), float(p)) for m, p in zip(ids, logp)]

    def model_status(self, timeout_s: float | None = None) -> str | None:
        """The newest AVAILABLE version (ModelService.GetModelStatus), None when none is."""
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        req = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=self.model_name))
        try:
            resp = stub.GetModelStatus(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise ModelUnavailable(f"model server {self.target}: {exc.code().name}: {exc.details()}") from None
        available = [s.version for s in resp.model_version_status
                     if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE]
        return str(max(available)) if available else None

    def close(self) -> None:
        self.channel.close()


def _is_missing_signature(exc: grpc.RpcError) -> bool:
    """The model server answered that this export has no such signature (not a failure of the server)."""
    return exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                          grpc.StatusCode.NOT_FOUND) and "signature" in (exc.details() or "").lower()

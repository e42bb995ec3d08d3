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

from model.signature import NEXT_MOVIES_SIGNATURE, RANK_IDS_SIGNATURE, RECOMMEND_SIGNATURE, SIGNATURE_NAME
from model.vocab import left_pad


class ModelUnavailable(RuntimeError):
    """The model server did not answer in time or answered with an error."""


@dataclass
class Ranking:
    score: np.ndarray      # [N]
    rating: np.ndarray     # [N]
    attention: np.ndarray  # [N, H]
    model_version: str


@dataclass
class Recommended:
    """One ``recommend`` answer: the model's next movies with their ranking, and the ranking of the ids sent."""

    next_movies: list[tuple[int, float]]  # (movie id, log-probability), best first, as ``next_movies``
    next_ranking: Ranking                 # aligned with next_movies
    ranking: Ranking                      # aligned with the movie ids sent


# Reconnect quickly after the model server comes back (defaults back off up to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


# How long the client trusts what it learnt about rank_ids (absent from the export, or precomputed for another
# batch version) before it asks again: a new export or a new publish is picked up within this time.
RANK_IDS_RECHECK_S = 10.0

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


# ``serving.model_server`` value for the model server in the gateway's own process (see LocalStub).
IN_PROCESS = "in-process"


class LocalRpcError(grpc.RpcError):
    """A model server in this process refused a call: the status a gRPC client would have seen."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class LocalStub:
    """``Predict`` and ``GetModelStatus`` answered by a ``ModelServer`` in this process (``serving.model_server =
    "in-process"``): the same requests, answers, status codes and request batching as over gRPC, without the
    transport, its threads and a second process's copy of every tensor.

    Why it exists: through gRPC the model server spends ~3 CPU-ms per Recommend beyond the model itself; in
    one process that goes, but the gateway's Python and the model's share one GIL, and on two cores the sum
    measured no lower (README, "Serving"), so the child process stays the default. The deadline is the
    batcher's: a request whose deadline has passed when its batch runs is not computed; one already
    computing finishes (gRPC would stop waiting for it instead).
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def _call(self, fn: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        from serving.model_server.signature import ServingError

        try:
            return fn(request, **kwargs)
        except ServingError as exc:
            raise LocalRpcError(exc.code, exc.message) from None

    def Predict(self, request: Any, timeout: float | None = None) -> Any:  # noqa: N802 - the stub's name
        return self._call(self.server.predict, request,
                          deadline=None if timeout is None else time.monotonic() + timeout)

    def GetModelStatus(self, request: Any, timeout: float | None = None) -> Any:  # noqa: N802
        return self._call(self.server.model_status, request)


class RankingClient:
    """``local``: a ``ModelServer`` of this process to call through ``LocalStub`` instead of a channel to ``target``."""

    def __init__(self, target: str, model_name: str, timeout_s: float, breaker: Breaker | None = None,
                 local: Any = None) -> None:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target, self.model_name, self.timeout_s = target, model_name, timeout_s
        self.breaker = breaker or Breaker(0, 0.0)
        self.local = local
        self._ids_off_until = float("-inf")            # rank_ids missing from the export: skip it until then
        self._ids_batch: tuple[str, float] | None = None  # (batch version rank_ids last reported, when)
        self._one_call_off_until = float("-inf")      # recommend missing from the export: skip it until then
        if local is not None:
            self.channel = None
            self.stub = self.status_stub = LocalStub(local)
        else:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
            self.status_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

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
        """One Predict call (serving_default) for B = 1 user and N candidates with their features."""
        try:
            resp = self._predict(self._request(SIGNATURE_NAME, request), timeout_s)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None
        return self._ranking(resp, request["movie_ids"].shape[1])[0]

    def rank_ids(self, user: dict[str, np.ndarray], movie_ids: np.ndarray, batch_version: str,
                 full: Callable[[], dict[str, np.ndarray]], timeout_s: float | None = None) -> Ranking:
        """The same answer as ``rank(full())``, through ``rank_ids`` whenever that is exact.

        ``rank_ids`` carries the user inputs and the candidate ids only (the candidate side was computed at
        export). It is exact for movies it knows, and only when the model's precomputed movie statistics are
        those of ``batch_version`` (the version the caller reads); otherwise, or when the export has no
        ``rank_ids``, the full request is built (``full``) and sent to serving_default. What it learns
        (absent signature, another batch version) is trusted for ``RANK_IDS_RECHECK_S``.
        """
        start = time.monotonic()

        def left() -> float | None:
            return None if timeout_s is None else max(0.001, timeout_s - (time.monotonic() - start))

        if not self._table_may_serve(batch_version, start):
            return self.rank(full(), timeout_s)
        try:
            resp = self._predict(self._request(RANK_IDS_SIGNATURE, {**user, "movie_ids": movie_ids}), timeout_s)
        except grpc.RpcError as exc:
            if _is_missing_signature(exc):
                self._ids_off_until = time.monotonic() + RANK_IDS_RECHECK_S
                return self.rank(full(), left())
            raise self._unavailable(exc) from None
        ranking, out = self._ranking(resp, movie_ids.shape[1])
        served_batch, known = self._table_answer(out, movie_ids.shape[1], RANK_IDS_SIGNATURE)
        if served_batch != batch_version or not known:
            return self.rank(full(), left())
        return ranking

    def _table_may_serve(self, batch_version: str, now: float) -> bool:
        """May ``rank_ids`` / ``recommend`` be exact now? Not while the export is known to lack ``rank_ids``, nor
        while its candidate table last reported another batch version than ``batch_version`` (both trusted
        for ``RANK_IDS_RECHECK_S``)."""
        learnt = self._ids_batch
        return now >= self._ids_off_until and not (
            learnt is not None and learnt[0] != batch_version and now - learnt[1] < RANK_IDS_RECHECK_S)

    def _table_answer(self, out: dict[str, np.ndarray], n: int, signature: str) -> tuple[str, bool]:
        """(the batch version the candidate table holds, whether it knew all ``n`` movies sent) of a
        ``rank_ids`` / ``recommend`` answer; the version is remembered for ``_table_may_serve``."""
        try:
            first = np.asarray(out["batch_version"]).reshape(-1)[0]
            served_batch = first.decode() if isinstance(first, bytes) else str(first)
            known = bool(np.all(np.asarray(out["known"])[0][:n]))
        except (KeyError, IndexError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside {signature}: {exc!r}") from None
        self._ids_batch = (served_batch, time.monotonic())
        return served_batch, known

    def recommend(self, user: dict[str, np.ndarray], movie_ids: np.ndarray, batch_version: str,
                  full: Callable[[], dict[str, np.ndarray]], timeout_s: float | None = None) -> Recommended | None:
        """The model's next movies and the ranking of both them and ``movie_ids``, in one ``recommend`` call.

        None when the two-call path must answer (``next_movies``, then ``rank_ids`` on the merged list): the
        export has no ``recommend`` (no sequence model, or older), or its precomputed candidate table holds
        another batch version's statistics than ``batch_version``; both are trusted for ``RANK_IDS_RECHECK_S``
        like ``rank_ids``' own. A sent movie the table does not know is re-scored with the rest of ``movie_ids``
        through ``serving_default`` (``full``), exactly as ``rank_ids`` does; the next movies are vocabulary
        movies, which the table always holds.
        """
        start = time.monotonic()
        if start < self._one_call_off_until or not self._table_may_serve(batch_version, start):
            return None
        try:
            resp = self._predict(self._request(RECOMMEND_SIGNATURE, {**user, "movie_ids": movie_ids}), timeout_s)
        except grpc.RpcError as exc:
            if _is_missing_signature(exc):
                self._one_call_off_until = time.monotonic() + RANK_IDS_RECHECK_S
                return None
            raise self._unavailable(exc) from None
        n = movie_ids.shape[1]
        ranking, out = self._ranking(resp, n)
        served_batch, known = self._table_answer(out, n, RECOMMEND_SIGNATURE)
        try:
            ids, logp = out["next_movie_ids"][0], out["next_log_prob"][0]
            next_ranking = Ranking(score=out["next_score"][0], rating=out["next_rating"][0],
                                   attention=out["next_attention"][0], model_version=ranking.model_version)
        except (KeyError, IndexError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside recommend: {exc!r}") from None
        if not len(ids) == len(logp) == len(next_ranking.score) == len(next_ranking.rating):
            raise ModelUnavailable(f"model server {self.target} answered {len(ids)} next movies with "
                                   f"{len(next_ranking.score)} scores")
        if served_batch != batch_version:
            return None
        if not known:
            left = None if timeout_s is None else max(0.001, timeout_s - (time.monotonic() - start))
            ranking = self.rank(full(), left)
        return Recommended(next_movies=[(int(m), float(p)) for m, p in zip(ids.tolist(), logp.tolist())],
                           next_ranking=next_ranking, ranking=ranking)

    def _unavailable(self, exc: grpc.RpcError) -> ModelUnavailable:
        return ModelUnavailable(f"model server {self.target}: {exc.code().name}: {exc.details()}")

    def _request(self, signature: str, inputs: dict[str, np.ndarray]) -> Any:
        from tensorflow_serving.apis import model_pb2, predict_pb2

        from serving.tensors import to_tensor_proto

        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=self.model_name, signature_name=signature))
        for name, value in inputs.items():
            req.inputs[name].CopyFrom(to_tensor_proto(value))
        return req

    def _ranking(self, resp: Any, n: int) -> tuple[Ranking, dict[str, np.ndarray]]:
        """The Ranking of a Predict answer for N candidates (and every output, decoded)."""
        from serving.tensors import from_tensor_proto

        version = str(resp.model_spec.version.value) if resp.model_spec.HasField("version") else ""
        try:
            out = {k: from_tensor_proto(v) for k, v in resp.outputs.items()}
            # TF Serving's batcher with pad_variable_length_inputs returns rows padded to the largest N of the batch.
            ranking = Ranking(score=out["score"][0][:n], rating=out["rating"][0][:n],
                              attention=out["attention"][0][:n], model_version=version)
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside the signature: {exc!r}") from None
        if len(ranking.score) != n or len(ranking.rating) != n or ranking.attention.ndim != 2:
            raise ModelUnavailable(f"model server {self.target} answered {len(ranking.score)} scores for {n} candidates")
        return ranking, out

    def next_movies(self, history: list[int], history_len: int, timeout_s: float | None = None) -> list[tuple[int, float]]:
        """The model's ``next_movies`` signature for one history: (movie id, log-probability), best first.

        An export without that signature (trained without the sequence model) answers [] - the channel is simply
        absent; a model server that is down raises ModelUnavailable like ``rank``.
        """
        from serving.tensors import from_tensor_proto

        req = self._request(NEXT_MOVIES_SIGNATURE, {"hist_movie_ids": left_pad([history], history_len, np.int64)})
        try:
            resp = self._predict(req, timeout_s)
        except grpc.RpcError as exc:
            if _is_missing_signature(exc):
                return []
            raise self._unavailable(exc) from None
        try:
            ids = from_tensor_proto(resp.outputs["movie_ids"])[0]
            logp = from_tensor_proto(resp.outputs["log_prob"])[0]
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelUnavailable(f"model server {self.target} answered outside next_movies: {exc!r}") from None
        return [(int(m), float(p)) for m, p in zip(ids, logp)]

    def model_status(self, timeout_s: float | None = None) -> str | None:
        """The newest AVAILABLE version (ModelService.GetModelStatus), None when none is."""
        from tensorflow_serving.apis import get_model_status_pb2, model_pb2

        req = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=self.model_name))
        try:
            resp = self.status_stub.GetModelStatus(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from None
        available = [s.version for s in resp.model_version_status
                     if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE]
        return str(max(available)) if available else None

    def close(self) -> None:
        if self.local is not None:
            self.local.stop()
        else:
            self.channel.close()


def _is_missing_signature(exc: grpc.RpcError) -> bool:
    """The model server answered that this export has no such signature (not a failure of the server)."""
    return exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                          grpc.StatusCode.NOT_FOUND) and "signature" in (exc.details() or "").lower()

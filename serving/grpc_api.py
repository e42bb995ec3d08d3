"""``recsys.v1.Recommender`` over gRPC: a thin adapter from protobuf to ``serving.gateway.Gateway``.

Status codes: INVALID_ARGUMENT for bad requests (the message names the field or ids),
NOT_FOUND for an unknown movie in SimilarMovies, UNAVAILABLE when nothing can answer,
DEADLINE_EXCEEDED when the caller's deadline has passed, INTERNAL (logged with the
traceback) for bugs. The server also carries ``grpc.health.v1`` (SERVING while it can
answer, degraded or not; NOT_SERVING while nothing can, i.e. no batch version was ever
readable, re-checked every ``HEALTH_SECONDS``) and server reflection, so ``grpcurl``
works without the proto.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.auth import bearer_ok
from serving.gateway import Answer, Gateway, error_code
from serving.protos.recsys.v1 import recommender_pb2 as pb
from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger("recsys.gateway")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
HEALTH_SECONDS = 1.0


def to_items(answer: Answer) -> list[pb.Item]:
    return [pb.Item(movie_id=i.movie_id, title=i.title, score=i.score, predicted_rating=i.predicted_rating,
                    sources=i.sources, reason=i.reason, genres=i.genres, year=i.year) for i in answer.items]


def _deadline(context: grpc.ServicerContext, default_ms: int) -> float:
    """The call's deadline on the monotonic clock (the caller's, else the configured default)."""
    remaining = context.time_remaining()  # without a client deadline gRPC answers ~9.2e18, not None
    if remaining is None or remaining > 1e9:
        remaining = default_ms / 1000.0
    return time.monotonic() + remaining


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.default_ms = gateway.cfg.serving.deadline_ms
        self.token = gateway.cfg.serving.api_token

    def _call(self, method: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        metrics = self.gw.metrics
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            given = dict(context.invocation_metadata()).get("authorization") if self.token else None
            if bearer_ok(given, self.token):
                return fn()
            code, message = grpc.StatusCode.UNAUTHENTICATED, "metadata 'authorization: Bearer <token>' is required"
        except Exception as exc:
            name = error_code(exc)
            if name is None:  # a bug: log it, answer INTERNAL, keep serving
                log.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, f"{method} failed; see the gateway log"
            else:
                code, message = grpc.StatusCode[name], str(exc)
        finally:
            metrics.requests.labels(method, code.name).inc()
            metrics.latency.labels(method).observe(time.perf_counter() - start)
        context.abort(code, message)

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        def run() -> pb.RecommendResponse:
            answer = self.gw.recommend(
                request.user_id, request.k, exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
                genres=list(request.genres), explain=request.explain if request.HasField("explain") else True,
                deadline=_deadline(context, self.default_ms))
            return pb.RecommendResponse(items=to_items(answer), model_version=answer.model_version,
                                        degraded=answer.degraded, batch_version=answer.batch_version,
                                        cold_start=answer.cold_start)
        return self._call("Recommend", context, run)

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        def run() -> pb.RankResponse:
            answer = self.gw.rank(request.user_id, list(request.movie_ids), deadline=_deadline(context, self.default_ms))
            return pb.RankResponse(items=to_items(answer), model_version=answer.model_version, degraded=answer.degraded)
        return self._call("Rank", context, run)

    def SimilarMovies(self, request: pb.SimilarMoviesRequest, context: grpc.ServicerContext) -> pb.SimilarMoviesResponse:
        def run() -> pb.SimilarMoviesResponse:
            answer = self.gw.similar(request.movie_id, request.k)
            return pb.SimilarMoviesResponse(items=to_items(answer), degraded=answer.degraded)
        return self._call("SimilarMovies", context, run)

    def RecordRating(self, request: pb.RecordRatingRequest, context: grpc.ServicerContext) -> pb.RecordRatingResponse:
        def run() -> pb.RecordRatingResponse:
            ts = request.timestamp if request.HasField("timestamp") else None
            key = request.idempotency_key if request.HasField("idempotency_key") else None
            return pb.RecordRatingResponse(event_id=self.gw.record_rating(request.user_id, request.movie_id,
                                                                          request.rating, ts, key))
        return self._call("RecordRating", context, run)


def start_grpc(gateway: Gateway, bind: str, port: int, workers: int = 16,
               max_in_flight: int = 32) -> tuple[grpc.Server, int]:
    """Start the gRPC server (Recommender + health + reflection); returns it and the bound port.

    Admission control: at most ``max_in_flight`` calls are accepted at once (gRPC's
    ``maximum_concurrent_rpcs``); one more is answered RESOURCE_EXHAUSTED immediately, so an
    overloaded gateway refuses fast instead of queueing every call until its deadline.
    """
    # so_reuseport off: a second gateway on the same port must fail, not silently share its traffic
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=max_in_flight)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(gateway), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = server.add_insecure_port(f"{bind}:{port}")
    except RuntimeError as exc:
        raise OSError(f"gRPC cannot listen on {bind}:{port} (in use?): {exc}") from None
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {bind}:{port} (in use?)")
    server.start()
    watch_health(gateway, health_servicer, server)
    return server, bound


def watch_health(gateway: Gateway, health_servicer: health.HealthServicer, server: grpc.Server) -> threading.Thread:
    """Keep ``grpc.health.v1`` (both names) at SERVING while the gateway can answer, NOT_SERVING while it cannot.

    A load balancer then sends no traffic to a gateway that could only answer UNAVAILABLE; degraded answers
    (Redis or the model down, a last good version in memory) still count as serving. The thread ends with the
    server (``wait_for_termination``), checked once a second.
    """
    def set_all(serving: bool) -> None:
        state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, state)

    last: list[bool] = []

    def check() -> None:
        try:
            now = gateway.can_answer()
        except Exception:  # noqa: BLE001 - a health probe must never kill its thread
            log.exception("health check failed")
            now = False
        if last != [now]:
            set_all(now)
            log.info("gRPC health: %s", "SERVING" if now else "NOT_SERVING (no batch version readable)")
            last[:] = [now]

    def loop() -> None:
        while server.wait_for_termination(timeout=HEALTH_SECONDS):  # True: timed out, still running
            check()

    check()
    thread = threading.Thread(target=loop, name="grpc-health", daemon=True)
    thread.start()
    return thread

"""Wiring of the serving plane for one home: Redis, the model server and the gateway.

``start_gateway`` runs the gateway (gRPC + HTTP) in this process against a Redis URL
and a model-server target. ``serving_stack`` adds what the embedded default needs: the
home's redis-server (unless ``redis.url`` is set) and the project's model server as a
child process (unless ``serving.model_server`` points at a TensorFlow Serving). The
model server lives in its own process so that the gateway outlives its crashes and
restarts, exactly as it would with a remote TF Serving.

Example::

    with serving_stack(cfg) as stack:
        print(stack.grpc_port, stack.http_port)
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import redis

from pipeline.config import Config
from pipeline.events import EventLog, open_event_log
from pipeline.home import Home
from pipeline.store import RedisStore
from serving.gateway import Gateway
from serving.grpc_api import start_grpc
from serving.metrics import GatewayMetrics
from serving.ranking_client import IN_PROCESS, Breaker, RankingClient
from serving.runtime import GcFreezer
from serving.web.app import build_app
from serving.web.server import start_http

log = logging.getLogger("recsys.serve")


def gateway_redis(url: str, timeout_ms: int) -> redis.Redis:
    """A Redis client whose calls fail fast (the gateway's fallbacks answer instead of waiting)."""
    seconds = timeout_ms / 1000.0
    return redis.Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds,
                                max_connections=64, single_connection_client=False)


@dataclass
class RunningGateway:
    gateway: Gateway
    grpc_port: int
    http_port: int
    grpc_server: Any
    http_server: Any
    events: EventLog | None
    model_target: str
    extras: dict[str, Any] = field(default_factory=dict)
    store: RedisStore | None = None  # what the gateway reads; its client is closed on stop

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, grace: float = 2.0) -> None:
        if "gc" in self.extras:
            self.extras["gc"].stop()
        self.grpc_server.stop(grace).wait()
        self.http_server.stop()
        if "accounts" in self.extras:
            self.extras["accounts"].close()
        self.gateway.ranking.close()
        if self.store is not None:
            self.store.client.close()
        if self.events is not None:
            self.events.close()


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(cfg: Config) -> None:
    """Refuse to serve beyond loopback without a bearer token: anyone who reached the port could write as anyone."""
    s = cfg.serving
    if s.bind not in LOOPBACK and not s.bind.startswith("127.") and not s.api_token:
        raise ValueError(f"serving.bind = {s.bind!r} listens beyond this machine, so serving.api_token must be set "
                         "(RECSYS_SERVING_API_TOKEN=...): gRPC and /api callers then send 'authorization: Bearer <token>'. "
                         "Keep bind = 127.0.0.1 to serve this machine only.")


def start_gateway(cfg: Config, redis_url: str, model_target: str, with_events: bool = True) -> RunningGateway:
    """gRPC and HTTP over one ``Gateway``; ``ValueError`` when the bind address needs a token and has none."""
    check_exposure(cfg)
    s = cfg.serving
    client = gateway_redis(redis_url, s.redis_timeout_ms)
    ranking = RankingClient(model_target, s.model_name, s.model_timeout_ms / 1000.0,
                            Breaker(s.model_breaker_failures, s.model_breaker_seconds),
                            local=local_model_server(cfg) if model_target == IN_PROCESS else None)
    events = open_event_log(cfg) if with_events else None
    store = RedisStore(client, cfg.redis.key_prefix)
    gateway = Gateway(cfg, store, ranking, events, GatewayMetrics())
    grpc_server = app = None
    try:
        grpc_server, grpc_port = start_grpc(gateway, s.bind, s.grpc_port, max_in_flight=s.grpc_max_in_flight)
        app = build_app(gateway)
        http_server = start_http(app, s.bind, s.http_port, s)
        http_port = http_server.port
    except BaseException:
        if grpc_server is not None:
            grpc_server.stop(0)
        if app is not None:
            app.accounts.close()
        ranking.close()
        client.close()
        if events is not None:
            events.close()
        raise
    running = RunningGateway(gateway, grpc_port, http_port, grpc_server, http_server, events, model_target, store=store)
    running.extras["accounts"] = app.accounts
    running.extras["gc"] = GcFreezer()
    return running


def local_model_server(cfg: Config) -> Any:
    """The model server in this process (``serving.model_server = "in-process"``): the embedded server's
    polling, warm-up and batching, called without gRPC (``serving.ranking_client.LocalStub``)."""
    from serving.model_server import ModelServer
    from serving.model_server.main import set_tf_threads

    s = cfg.serving
    try:
        set_tf_threads(s.model_intra_op_threads, s.model_inter_op_threads)
    except RuntimeError as exc:  # TensorFlow already ran something in this process: its pools stay
        log.warning("in-process model server: TensorFlow threads not set (%s)", exc)
    base = model_base_path(cfg)
    base.mkdir(parents=True, exist_ok=True)
    server = ModelServer(base, s.model_name, poll_seconds=s.model_poll_seconds, max_batch=s.max_batch,
                         batch_timeout_ms=s.batch_timeout_ms)
    server.start_local()
    return server


@contextmanager
def access_log_file(path: Any) -> Iterator[None]:
    """The HTTP access log (one JSON object per line, ``recsys.access``) appended to ``path`` while inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("recsys.access")
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not on the console: one line per request
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(before[0])
        logger.propagate = before[1]


def model_base_path(cfg: Config) -> Any:
    from model.export import model_base

    return model_base(Home(cfg.home), cfg.serving.model_name)


@contextmanager
def serving_stack(cfg: Config) -> Iterator[RunningGateway]:
    """Redis + model server + gateway for ``cfg.home``; everything started here is stopped on exit."""
    from pipeline.redis_server import redis_for_home
    from serving.model_server import spawn_model_server

    s = cfg.serving
    with ExitStack() as stack:
        stack.enter_context(access_log_file(Home(cfg.home).logs / "access.log"))
        url = stack.enter_context(redis_for_home(cfg))
        target = s.model_server
        model = None
        if not target:  # (IN_PROCESS: start_gateway loads the model in this process)
            base = model_base_path(cfg)
            base.mkdir(parents=True, exist_ok=True)
            model = spawn_model_server(base, s.model_name, port=s.model_port, poll_seconds=s.model_poll_seconds,
                                       max_batch=s.max_batch, batch_timeout_ms=s.batch_timeout_ms,
                                       intra_op_threads=s.model_intra_op_threads,
                                       inter_op_threads=s.model_inter_op_threads,
                                       max_in_flight=s.model_max_in_flight,
                                       log_path=Home(cfg.home).logs / "model-server.log")
            stack.callback(model.stop)
            target = f"127.0.0.1:{model.port}"
        running = start_gateway(cfg, url, target)
        running.extras.update(redis_url=url, model=model)
        stack.callback(running.stop)
        yield running


def wait_for_model(running: RunningGateway, timeout: float = 120.0) -> str:
    """Block until the model server reports an AVAILABLE version (returned); ValueError after ``timeout``."""
    import time

    from serving.ranking_client import ModelUnavailable

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            version = running.gateway.ranking.model_status(timeout_s=2.0)
            if version:
                return version
        except ModelUnavailable:
            pass
        time.sleep(0.3)
    raise ValueError(f"the model server at {running.model_target} loaded no model in {timeout:.0f} s "
                     "(is there an export under models/? run `recsys export`)")

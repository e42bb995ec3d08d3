"""`recsys serve`: Redis, the model server and the gateway for one home, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from recsys.commands.ui import config_from, console


def serve_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    serving = {k: v for k, v in (("bind", args.bind), ("grpc_port", args.grpc_port), ("http_port", args.http_port),
                                 ("model_server", args.model_server)) if v is not None}
    return {"serving": serving} if serving else {}


def cmd_serve(args: argparse.Namespace) -> int:
    from model.export import exported_versions
    from pipeline.home import Home
    from pipeline.redis_server import display_url
    from serving.app import check_exposure, serving_stack
    from serving.ranking_client import IN_PROCESS

    cfg = config_from(args, serve_overrides(args))
    check_exposure(cfg)  # before anything starts: beyond loopback needs serving.api_token
    if cfg.serving.model_server in ("", IN_PROCESS) and not exported_versions(Home(cfg.home), cfg.serving.model_name):
        console.print(f"[yellow]no exported model under {Home(cfg.home).models / cfg.serving.model_name}: answers are "
                      "degraded (recall order) until `recsys export` writes one; the model server picks it up by itself")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with serving_stack(cfg) as stack:
        health = stack.gateway.health()
        console.print(f"[bold green]serving[/] home {cfg.home}\n"
                      f"  gRPC recsys.v1.Recommender  {cfg.serving.bind}:{stack.grpc_port}\n"
                      f"  HTTP web pages, /api, /healthz, /metrics  {web_address(cfg, stack.http_port)}\n"
                      f"  model server  {stack.model_target} (model '{cfg.serving.model_name}', version "
                      f"{health['model_version'] or 'none yet'})\n"
                      f"  Redis  {display_url(stack.extras['redis_url'])} (batch version {health['batch_version'] or 'none: run `recsys batch`'})\n"
                      f"  events  -> {cfg.events.log} ({'spool ' + str(_spool(cfg)) if cfg.events.log == 'spool' else cfg.events.kafka_topic})\n"
                      "Ctrl-C stops everything.")
        stop.wait()
        console.print("stopping ...")
    console.print("stopped")
    return 0


def web_address(cfg: Any, port: int) -> str:
    """The address a browser on this machine opens (a wildcard bind is reachable on loopback)."""
    host = "127.0.0.1" if cfg.serving.bind in ("0.0.0.0", "::", "") else cfg.serving.bind
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if cfg.serving.tls_certfile else 'http'}://{host}:{port}/"


def _spool(cfg: Any) -> Any:
    from pipeline.events import spool_dir

    return spool_dir(cfg)

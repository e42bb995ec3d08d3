"""The one ASGI application of the HTTP port: pages, ``/api``, ``/healthz``, ``/metrics``, static files.

Layers, outermost first: the structured access log (one JSON line per request on the
``recsys.access`` logger), the signed session (pages only), then the routes. The
HTTP framing, read timeouts and connection bounds live one level down, in
``serving.web.server``.

Example::

    app = build_app(gateway)                  # gateway: serving.gateway.Gateway
    server = start_http(app, "127.0.0.1", 8080, cfg.serving)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.home import Home
from serving.gateway import Gateway, NotFound
from serving.web.accounts import AccountStore
from serving.web.api import api_routes
from serving.web.pages import Pages
from serving.web.security import LoginLimiter, SessionMiddleware, session_secret
from serving.web.site import Site

access_log = logging.getLogger("recsys.access")
STATIC = Path(__file__).parent / "static"


class AccessLog:
    """One JSON object per request: time, client, method, path, status, bytes, milliseconds."""

    def __init__(self, app: ASGIApp, accounts: AccountStore | None = None) -> None:
        self.app = app
        self.accounts = accounts  # what build_app opened, for whoever stops the server to close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": 0, "bytes": 0}

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "client": client[0], "method": scope["method"], "path": scope["path"],
                    "status": seen["status"], "bytes": seen["bytes"],
                    "ms": round((time.perf_counter() - start) * 1000, 2)}))


def accounts_for(gateway: Gateway) -> AccountStore:
    cfg = gateway.cfg
    url = cfg.web.database_url
    if not url:
        path = Home(cfg.home).root / "web" / "accounts.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    site = Site(gateway)
    return AccountStore(url, cfg.web.account_id_base, is_dataset_user=site.is_dataset_user)


def build_app(gateway: Gateway, accounts: AccountStore | None = None) -> AccessLog:
    """The whole HTTP surface over one ``Gateway`` (accounts: SQL store of ``web.database_url`` by default)."""
    cfg = gateway.cfg
    accounts = accounts or accounts_for(gateway)
    pages = Pages(gateway, accounts, LoginLimiter(cfg.web.login_attempts, cfg.web.login_window_seconds))

    async def healthz(_request: Request) -> Response:
        status = await run_in_threadpool(gateway.health)
        return JSONResponse(status, status_code=200 if status["redis"] or status["model"] else 503)

    async def metrics(_request: Request) -> Response:
        return Response(gateway.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request, _exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"no such path {request.url.path}", "code": "NOT_FOUND"}, status_code=404)
        return await run_in_threadpool(pages.error_page, request, NotFound(f"no page at {request.url.path}"))

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}", "code": "INVALID_ARGUMENT"},
                            status_code=405)

    routes = [*api_routes(gateway), Route("/healthz", healthz), Route("/metrics", metrics),
              Mount("/static", StaticFiles(directory=STATIC)), *pages.routes()]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    secret = session_secret(cfg.web.session_secret, Home(cfg.home).root / "web" / "session.key")
    return AccessLog(SessionMiddleware(app, secret, cfg.web.session_days), accounts)

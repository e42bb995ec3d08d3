"""The HTTP side of the gateway: a JSON mirror of the four calls, health and metrics.

    POST /api/recommend   {"user_id": 42, "k": 10, "exclude_seen": true, "genres": ["Drama"], "explain": true}
    GET  /api/recommend?user_id=42&k=10&genres=Drama,Comedy
    POST /api/rank        {"user_id": 42, "movie_ids": [1, 2, 3]}
    GET  /api/similar?movie_id=1&k=10          (POST {"movie_id": 1, "k": 10} too)
    POST /api/ratings     {"user_id": 42, "movie_id": 1, "rating": 4.5, "timestamp": 978300760}
    GET  /healthz         {"status": "ok"|"degraded", "redis": ..., "model": ...}
    GET  /metrics         Prometheus text format

Field names and errors match the gRPC API: 400 names the bad field (INVALID_ARGUMENT),
404 an unknown movie or path, 503 when nothing can answer. The standard library's
threading HTTP server is enough for a JSON mirror and keeps the dependency set small;
production traffic is expected on gRPC.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from serving.gateway import Answer, Gateway, InvalidArgument, error_code

log = logging.getLogger("recsys.http")
MAX_BODY = 1 << 20
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def answer_json(answer: Answer) -> dict[str, Any]:
    return {"items": [asdict(i) for i in answer.items], "model_version": answer.model_version,
            "degraded": answer.degraded, "batch_version": answer.batch_version, "cold_start": answer.cold_start}


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if value is None:
        raise InvalidArgument(f"{name} is required")
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and out != value:
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    return out


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false, got {value!r}")
    return value


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    if not isinstance(value, list):
        raise InvalidArgument(f"{name} must be a list")
    return value


class Routes:
    """Path -> handler(body) -> JSON-able result; shared by GET (query string) and POST (JSON body)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.table: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
            "/api/recommend": ("Recommend", self.recommend),
            "/api/rank": ("Rank", self.rank),
            "/api/similar": ("SimilarMovies", self.similar),
            "/api/ratings": ("RecordRating", self.record),
        }

    def recommend(self, b: dict[str, Any]) -> Any:
        deadline = time.monotonic() + self.gw.cfg.serving.deadline_ms / 1000.0
        return answer_json(self.gw.recommend(_int(b, "user_id"), _int(b, "k", 0), _bool(b, "exclude_seen", True),
                                             [str(g) for g in _list(b, "genres")], _bool(b, "explain", True), deadline))

    def rank(self, b: dict[str, Any]) -> Any:
        ids = [_int({"movie_ids": m}, "movie_ids") for m in _list(b, "movie_ids")]
        deadline = time.monotonic() + self.gw.cfg.serving.deadline_ms / 1000.0
        return answer_json(self.gw.rank(_int(b, "user_id"), ids, deadline))

    def similar(self, b: dict[str, Any]) -> Any:
        return answer_json(self.gw.similar(_int(b, "movie_id"), _int(b, "k", 0)))

    def record(self, b: dict[str, Any]) -> Any:
        rating = b.get("rating")
        if isinstance(rating, str):
            try:
                rating = float(rating)
            except ValueError:
                raise InvalidArgument(f"rating must be a number, got {rating!r}") from None
        ts = b.get("timestamp")
        event_id = self.gw.record_rating(_int(b, "user_id"), _int(b, "movie_id"), rating,  # type: ignore[arg-type]
                                         None if ts is None else _int(b, "timestamp"))
        return {"event_id": event_id}


def make_handler(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    routes = Routes(gateway)
    metrics = gateway.metrics

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "recsys-gateway"

        def log_message(self, fmt: str, *args: Any) -> None:  # access log at debug level, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _api(self, path: str, body: dict[str, Any]) -> None:
            method, fn = routes.table[path]
            start = time.perf_counter()
            code = "OK"
            try:
                self._send(200, fn(body))
            except Exception as exc:
                name = error_code(exc)
                if name is None:
                    code = "INTERNAL"
                    log.exception("%s failed", path)
                    self._send(500, {"error": f"{method} failed; see the gateway log", "code": code})
                else:
                    code = name
                    self._send(HTTP_STATUS[name], {"error": str(exc), "code": code})
            finally:
                metrics.requests.labels(method, code).inc()
                metrics.latency.labels(method).observe(time.perf_counter() - start)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlparse(self.path)
            if url.path == "/healthz":
                status = gateway.health()
                self._send(200 if status["redis"] or status["model"] else 503, status)
            elif url.path == "/metrics":
                self._send(200, metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path in routes.table:
                self._api(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
            else:
                self._send(404, {"error": f"no such path {url.path}", "code": "NOT_FOUND"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path not in routes.table:
                self._send(404, {"error": f"no such path {url.path}", "code": "NOT_FOUND"})
                return
            raw_length = self.headers.get("Content-Length")
            if raw_length is None or not raw_length.strip().isdigit():
                # no (or a bad) length: the body cannot be delimited, so the connection cannot be reused either
                self.close_connection = True
                self._send(411, {"error": "a JSON body with a Content-Length header is required", "code": "INVALID_ARGUMENT"})
                return
            length = int(raw_length)
            if length > MAX_BODY:
                self.close_connection = True
                self._send(413, {"error": f"body larger than {MAX_BODY} bytes", "code": "INVALID_ARGUMENT"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._send(400, {"error": f"body is not JSON: {exc}", "code": "INVALID_ARGUMENT"})
                return
            if not isinstance(body, dict):
                self._send(400, {"error": "body must be a JSON object", "code": "INVALID_ARGUMENT"})
                return
            self._api(url.path, body)

    return Handler


def start_http(gateway: Gateway, bind: str, port: int) -> tuple[ThreadingHTTPServer, int]:
    """Serve HTTP on a daemon thread; returns the server (``shutdown()`` stops it) and its port."""
    server = ThreadingHTTPServer((bind, port), make_handler(gateway))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server, server.server_address[1]

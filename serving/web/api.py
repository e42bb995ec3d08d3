"""``/api``: the JSON mirror of ``recsys.v1.Recommender``, a thin adapter over ``Gateway``.

    POST /api/recommend   {"user_id": 42, "k": 10, "exclude_seen": true, "genres": ["Drama"], "explain": true}
    GET  /api/recommend?user_id=42&k=10&genres=Drama,Comedy
    POST /api/rank        {"user_id": 42, "movie_ids": [1, 2, 3]}
    GET  /api/similar?movie_id=1&k=10          (POST {"movie_id": 1, "k": 10} too)
    POST /api/ratings     {"user_id": 42, "movie_id": 1, "rating": 4.5, "timestamp": 978300760,
                           "idempotency_key": "7f9c..."}   (optional: a retry with it appends nothing new)

Field names and errors match the gRPC API: 400 names the bad field (INVALID_ARGUMENT),
401 a missing or wrong bearer token (when ``serving.api_token`` is set), 404 an unknown
movie or path, 405 a write over GET, 411 a body without Content-Length, 413 a body over
``serving.http_max_body_bytes``, 415 a POST body that is not ``application/json``, 429
(RESOURCE_EXHAUSTED, ``retry-after: 1``) at once when ``serving.http_max_in_flight`` calls
are already being answered (overload is refused fast, never queued to the deadline), 503
when nothing can answer. Every value is checked against its protobuf type before the
gateway sees it (an id beyond int64, a 401-digit rating or a 10,000-deep JSON array is a
400 naming the field, never a 500).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.auth import bearer_ok
from serving.gateway import Answer, Gateway, InvalidArgument, error_code

log = logging.getLogger("recsys.http")
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504}
INT64 = (-(1 << 63), (1 << 63) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
MAX_LIST = 10_000


class HttpError(Exception):
    """An HTTP-level refusal (status + message) raised before the gateway is called."""

    def __init__(self, status: int, message: str, code: str = "INVALID_ARGUMENT", close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.close = status, code, close


def error_response(status: int, message: str, code: str, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    if status == 401:
        headers = {**(headers or {}), "www-authenticate": 'Bearer realm="recsys"'}
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def answer_json(answer: Answer) -> dict[str, Any]:
    return {"items": [asdict(i) for i in answer.items], "model_version": answer.model_version,
            "degraded": answer.degraded, "batch_version": answer.batch_version, "cold_start": answer.cold_start}


# --- field checks (the protobuf types of recsys.v1) ------------------------------------------
def int_field(body: dict[str, Any], name: str, default: int | None = None, bounds: tuple[int, int] = INT64) -> int:
    """An integer field: JSON integers, integral floats, or digit strings (query strings), within ``bounds``."""
    value = body.get(name, default)
    if value is None:
        raise InvalidArgument(f"{name} is required")
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not (text.lstrip("+-").isdigit() and len(text) <= 25):
            raise InvalidArgument(f"{name} must be an integer, got {value[:40]!r}")
        value = int(text)
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidArgument(f"{name} must be an integer, got {value!r}")
        value = int(value)
    elif not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        shown = str(value) if len(str(value)) <= 30 else f"a {len(str(value))}-digit number"
        raise InvalidArgument(f"{name} must be between {bounds[0]} and {bounds[1]}, got {shown}")
    return value


def number_field(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if value is None:
        raise InvalidArgument(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgument(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (ValueError, OverflowError):
        shown = value if len(str(value)) <= 30 else f"a {len(str(value))}-character value"
        raise InvalidArgument(f"{name} must be a number, got {shown!r}") from None
    if not math.isfinite(out):
        raise InvalidArgument(f"{name} must be a finite number, got {value!r}")
    return out


def bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"{name} must be true or false, got {value[:40]!r}")
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false, got {value!r}")
    return value


def list_field(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list):
        raise InvalidArgument(f"{name} must be a list")
    if len(value) > MAX_LIST:
        raise InvalidArgument(f"{name} has {len(value)} entries, at most {MAX_LIST}")
    return value


def str_list_field(body: dict[str, Any], name: str) -> list[str]:
    values = list_field(body, name)
    if not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"{name} must be a list of strings")
    return values


# --- the four calls -------------------------------------------------------------------------
class ApiCalls:
    """Path -> (gRPC method name, handler(body) -> JSON-able result, is a write)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.table: dict[str, tuple[str, Callable[[dict[str, Any]], Any], bool]] = {
            "/api/recommend": ("Recommend", self.recommend, False),
            "/api/rank": ("Rank", self.rank, False),
            "/api/similar": ("SimilarMovies", self.similar, False),
            "/api/ratings": ("RecordRating", self.record, True),
        }

    def _deadline(self) -> float:
        return time.monotonic() + self.gw.cfg.serving.deadline_ms / 1000.0

    def recommend(self, b: dict[str, Any]) -> Any:
        return answer_json(self.gw.recommend(int_field(b, "user_id"), int_field(b, "k", 0, INT32),
                                             bool_field(b, "exclude_seen", True), str_list_field(b, "genres"),
                                             bool_field(b, "explain", True), self._deadline()))

    def rank(self, b: dict[str, Any]) -> Any:
        ids = [int_field({"movie_ids": m}, "movie_ids") for m in list_field(b, "movie_ids")]
        return answer_json(self.gw.rank(int_field(b, "user_id"), ids, self._deadline()))

    def similar(self, b: dict[str, Any]) -> Any:
        return answer_json(self.gw.similar(int_field(b, "movie_id"), int_field(b, "k", 0, INT32)))

    def record(self, b: dict[str, Any]) -> Any:
        ts, key = b.get("timestamp"), b.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise InvalidArgument(f"idempotency_key must be a string, got {type(key).__name__}")
        event_id = self.gw.record_rating(int_field(b, "user_id"), int_field(b, "movie_id"), number_field(b, "rating"),
                                         None if ts is None else int_field(b, "timestamp"), key)
        return {"event_id": event_id}


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, or ``HttpError`` (411/413/415/400) saying what is wrong."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw_length = request.headers.get("content-length")
    if raw_length is None:
        raise HttpError(411, "a JSON body with a Content-Length header is required", close=True)
    length = int(raw_length)  # h11 has checked it is digits
    if length > max_bytes:
        raise HttpError(413, f"body of {length} bytes is larger than {max_bytes} bytes", close=True)
    if content_type != "application/json":
        raise HttpError(415, f"the body must be application/json, got {content_type or 'no Content-Type'!r}")
    try:
        raw = await request.body()
    except ClientDisconnect:  # the read timeout closed it (or the client went away): nobody to answer
        raise HttpError(408, "the body did not arrive in time", close=True) from None
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a >4300-digit integer, nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise HttpError(400, f"body is not JSON: {reason}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body


def api_routes(gateway: Gateway) -> list[Route]:
    calls = ApiCalls(gateway)
    metrics = gateway.metrics
    s = gateway.cfg.serving
    in_flight = [0]  # calls handed to the thread pool; read and written on the event loop only

    async def endpoint(request: Request) -> Response:
        method, fn, write = calls.table[request.url.path]
        start = time.perf_counter()
        code = "OK"
        try:
            if not bearer_ok(request.headers.get("authorization"), s.api_token):
                code = "UNAUTHENTICATED"
                return error_response(401, "a valid 'authorization: Bearer <token>' header is required", code)
            if request.method == "GET":
                if write:
                    code = "INVALID_ARGUMENT"
                    refused = error_response(405, f"{request.url.path} is a write: use POST with a JSON body",
                                             "INVALID_ARGUMENT")
                    refused.headers["allow"] = "POST"
                    return refused
                body: dict[str, Any] = dict(request.query_params)
            else:
                body = await read_json_body(request, s.http_max_body_bytes)
            if in_flight[0] >= s.http_max_in_flight:
                code = "RESOURCE_EXHAUSTED"
                refused = error_response(429, f"{s.http_max_in_flight} calls are being answered; retry shortly", code)
                refused.headers["retry-after"] = "1"
                return refused
            in_flight[0] += 1
            try:
                return JSONResponse(await run_in_threadpool(fn, body))
            finally:
                in_flight[0] -= 1
        except HttpError as exc:
            code = exc.code
            return error_response(exc.status, str(exc), exc.code, exc.close)
        except Exception as exc:
            name = error_code(exc)
            if name is None:
                code = "INTERNAL"
                log.exception("%s failed", request.url.path)
                return error_response(500, f"{method} failed; see the gateway log", code)
            code = name
            return error_response(HTTP_STATUS[name], str(exc), code)
        finally:
            metrics.requests.labels(method, code).inc()
            metrics.latency.labels(method).observe(time.perf_counter() - start)

    return [Route(path, endpoint, methods=["GET", "POST"]) for path in calls.table]

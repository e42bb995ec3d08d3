"""The HTTP port from outside, over raw sockets on loopback: framing (RFC 9112), desync, huge and
mistyped values, deep JSON, body limits, slow and partial requests, bearer tokens, access logs.

A real gateway (uvicorn + the guarded h11 protocol) against a real redis-server with nothing
published (so valid reads answer 503) and a model target nobody listens on: every case here
is decided before data matters. Bounded: each case is one request or a handful, each socket
read gives up after 10 s.
"""

from __future__ import annotations

import json
import logging
import random
import socket
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from serving.app import check_exposure, start_gateway
from serving.protos.recsys.v1 import recommender_pb2 as pb
from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import make_config

pytestmark = [pytest.mark.redis]
READ_TIMEOUT = 1.0  # the server's whole-request read budget in these tests
CLIENT_WAIT = 10.0  # how long a test socket waits for the server (the target bound)


def _config(tmp: Path, redis_url: str, **serving: Any) -> Any:
    cfg = make_config(tmp, redis_url)
    cfg = cfg.replace("serving", bind="127.0.0.1", grpc_port=0, http_port=0, http_read_timeout_seconds=READ_TIMEOUT,
                      http_keep_alive_seconds=1, model_timeout_ms=200, **serving)
    return cfg.replace("events", spool_dir=str(tmp / "spool"))


@pytest.fixture(scope="module")
def gw(redis_srv: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("http")
    running = start_gateway(_config(tmp, redis_srv.url), redis_srv.url, "127.0.0.1:1")
    yield running
    running.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes] | None:
    """One response from ``sock`` (``buf`` keeps what follows it); None when the server closed first."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    buf[:] = rest[length:]
    return status, headers, rest[:length]


def _closed(sock: socket.socket, buf: bytearray) -> bool:
    """True once the server has closed the connection (read returns EOF within CLIENT_WAIT)."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            buf += chunk
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def _post(path: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _exchange(port: int, raw: bytes) -> tuple[tuple[int, dict[str, str], bytes] | None, socket.socket, bytearray]:
    sock = _connect(port)
    sock.sendall(raw)
    buf = bytearray()
    return _read_response(sock, buf), sock, buf


def _healthz_still_answers(sock: socket.socket, buf: bytearray) -> bool:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    resp = _read_response(sock, buf)
    return resp is not None and resp[0] in (200, 503) and b'"redis"' in resp[2]


# --- framing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    "Content-Length: 2\r\nContent-Length: 2\r\n",
    "Content-Length: 2, 2\r\n",
    "Content-Length: 2\r\nContent-Length: 40\r\n",
    "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
])
def test_ambiguous_framing_is_refused_and_the_connection_closed(gw: Any, headers: str) -> None:
    raw = (f"POST /api/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}\r\n{{}}"
           "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").encode()
    resp, sock, buf = _exchange(gw.http_port, raw)
    assert resp is not None and resp[0] == 400 and b"RFC 9112" in resp[2]
    assert _closed(sock, buf) and b"HTTP/1.1" not in bytes(buf)   # the smuggled request never ran
    sock.close()


def test_an_unread_body_never_becomes_the_next_request(gw: Any) -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    resp, sock, buf = _exchange(gw.http_port, _post("/api/recommend", smuggled))
    assert resp is not None and resp[0] == 400 and "not JSON" in json.loads(resp[2])["error"]
    # the body was consumed as a body: the next response is for the next real request, and only one
    assert _healthz_still_answers(sock, buf)
    sock.settimeout(0.5)
    assert not _closed(sock, buf) and not bytes(buf)
    sock.close()


def test_pipelined_requests_are_answered_in_order(gw: Any) -> None:
    raw = _post("/api/similar", b'{"movie_id": 0}') + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + \
        _post("/api/rank", b'{"user_id": 1, "movie_ids": []}')
    first, sock, buf = _exchange(gw.http_port, raw)
    second, third = _read_response(sock, buf), _read_response(sock, buf)
    assert first and first[0] == 400 and "movie_id" in json.loads(first[2])["error"]
    assert second and b'"redis"' in second[2]
    assert third and third[0] == 400 and "movie_ids" in json.loads(third[2])["error"]
    sock.close()


# --- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/api/recommend", {"user_id": 2 ** 63}, "user_id"),
    ("/api/recommend", {"user_id": -(2 ** 63) - 1}, "user_id"),
    ("/api/recommend", {"user_id": 10 ** 400}, "user_id"),
    ("/api/recommend", {"user_id": 1, "k": 2 ** 40}, "k"),
    ("/api/recommend", {"user_id": "12abc"}, "user_id"),
    ("/api/recommend", {"user_id": 1.5}, "user_id"),
    ("/api/recommend", {"user_id": True}, "user_id"),
    ("/api/recommend", {"user_id": [1]}, "user_id"),
    ("/api/recommend", {"user_id": 1, "genres": "Drama,Polka"}, "Polka"),
    ("/api/recommend", {"user_id": 1, "genres": [1, 2]}, "genres"),
    ("/api/recommend", {"user_id": 1, "exclude_seen": "maybe"}, "exclude_seen"),
    ("/api/rank", {"user_id": 1, "movie_ids": [1, 2 ** 64]}, "movie_ids"),
    ("/api/rank", {"user_id": 1, "movie_ids": {"a": 1}}, "movie_ids"),
    ("/api/similar", {"movie_id": 99999999999999999999999}, "movie_id"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 10 ** 400}, "rating"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": "lots"}, "rating"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 7}, "rating"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 4, "timestamp": 2 ** 70}, "timestamp"),
    ("/api/ratings", {"user_id": 1, "movie_id": 2 ** 63, "rating": 4}, "movie_id"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 4, "idempotency_key": 12}, "idempotency_key"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 4, "idempotency_key": "k" * 129}, "idempotency_key"),
    ("/api/ratings", {"user_id": 1, "movie_id": 1, "rating": 4, "idempotency_key": "caf\u00e9"}, "idempotency_key"),
])
def test_out_of_range_and_mistyped_values_are_400_naming_the_field(gw: Any, path: str, body: dict, field: str) -> None:
    resp, sock, buf = _exchange(gw.http_port, _post(path, json.dumps(body).encode()))
    assert resp is not None and resp[0] == 400, resp
    answer = json.loads(resp[2])
    assert field in answer["error"] and answer["code"] == "INVALID_ARGUMENT"
    assert _healthz_still_answers(sock, buf)   # the connection stays usable
    sock.close()


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"user_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"user_id": 1' + b"0" * 5000 + b"}",          # past Python's int-conversion digit limit
    b"{not json", b"", b"[]", b'"text"', b"\xff\xfe",
])
def test_malformed_and_deep_json_is_400_not_a_dropped_connection(gw: Any, body: bytes) -> None:
    resp, sock, buf = _exchange(gw.http_port, _post("/api/recommend", body))
    assert resp is not None and resp[0] == 400, resp
    assert "error" in json.loads(resp[2])
    assert _healthz_still_answers(sock, buf)
    sock.close()


def test_query_strings_are_checked_like_bodies(gw: Any) -> None:
    for query, field in (("user_id=9223372036854775808", "user_id"), ("user_id=1&k=x", "k"),
                         ("user_id=" + "9" * 401, "user_id")):
        resp, sock, _ = _exchange(gw.http_port, f"GET /api/recommend?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert resp is not None and resp[0] == 400 and field in json.loads(resp[2])["error"]
        sock.close()


def test_a_retried_rating_with_its_idempotency_key_is_one_event(gw: Any) -> None:
    """HTTP and real gRPC on loopback over one gateway with its real spool: a retry with the same key (through
    either transport) answers the first call's event id and appends nothing; the same key for another rating
    is INVALID_ARGUMENT naming it; no key means a new event every time."""
    key = "retry-7f9c0b2e"

    def post(body: dict) -> tuple[int, dict]:
        resp, sock, _ = _exchange(gw.http_port, _post("/api/ratings", json.dumps(body).encode()))
        sock.close()
        assert resp is not None
        return resp[0], json.loads(resp[2])

    rating = {"user_id": 31, "movie_id": 5, "rating": 4.5, "idempotency_key": key}
    status, first = post(rating)
    assert status == 200
    assert post(rating) == (200, first)
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        again = stub.RecordRating(pb.RecordRatingRequest(user_id=31, movie_id=5, rating=4.5, idempotency_key=key),
                                  timeout=10)
        assert again.event_id == first["event_id"]
        other_user = stub.RecordRating(pb.RecordRatingRequest(user_id=32, movie_id=5, rating=4.5, idempotency_key=key),
                                       timeout=10)
        assert other_user.event_id != first["event_id"]
        with pytest.raises(grpc.RpcError) as err:
            stub.RecordRating(pb.RecordRatingRequest(user_id=31, movie_id=5, rating=2.0, idempotency_key=key), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.RecordRating(pb.RecordRatingRequest(user_id=31, movie_id=5, rating=4.5, idempotency_key=""), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in err.value.details()
        plain = [stub.RecordRating(pb.RecordRatingRequest(user_id=31, movie_id=5, rating=4.5), timeout=10).event_id
                 for _ in range(2)]
        assert len(set(plain)) == 2
    gw.events.flush()
    from pipeline.events import read_spool

    ids = [json.loads(line)["event_id"] for line in read_spool(gw.gateway.cfg.events.spool_dir)]
    assert ids.count(first["event_id"]) == 1 and ids.count(other_user.event_id) == 1
    assert set(plain) <= set(ids)


def test_healthz_shows_the_spool_failing_and_recovering(gw: Any) -> None:
    """A real fault: the spool directory vanishes under an open segment (moved away), so rolls fail; /healthz
    says so (status degraded, the error, since when, what is pending) and RecordRating is UNAVAILABLE (nothing
    accepted, so a retry is safe); moved back, the roller's retry
    publishes the segment and /healthz is ok again."""
    import time

    spool = Path(gw.gateway.cfg.events.spool_dir)

    def events_health() -> dict:
        resp, sock, _ = _exchange(gw.http_port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.close()
        assert resp is not None
        return json.loads(resp[2])

    def wait_for(state: str) -> dict:
        end = time.monotonic() + 30
        while (health := events_health())["events"]["state"] != state and time.monotonic() < end:
            time.sleep(0.1)
        return health

    gw.events.flush()
    assert events_health()["events"]["state"] == "ok"
    resp, sock, _ = _exchange(gw.http_port, _post("/api/ratings", json.dumps(
        {"user_id": 41, "movie_id": 5, "rating": 3.5}).encode()))
    sock.close()
    assert resp is not None and resp[0] == 200
    event_id = json.loads(resp[2])["event_id"]
    spool.rename(spool.with_name("spool-away"))
    try:
        health = wait_for("failing")
        assert health["status"] == "degraded" and health["events"]["state"] == "failing"
        assert "No such file or directory" in health["events"]["last_error"] and health["events"]["failing_since"]
        assert health["events"]["pending_events"] == 1
        resp, sock, _ = _exchange(gw.http_port, _post("/api/ratings", json.dumps(
            {"user_id": 41, "movie_id": 6, "rating": 3.5}).encode()))
        sock.close()
        assert resp is not None and resp[0] == 503 and json.loads(resp[2])["code"] == "UNAVAILABLE"  # retry later
    finally:
        spool.with_name("spool-away").rename(spool)
    assert wait_for("ok")["events"] == {"log": "spool", "state": "ok", "pending_events": 0, "pending_segments": 0}
    from pipeline.events import read_spool

    assert event_id in [json.loads(line)["event_id"] for line in read_spool(spool)]


# --- methods, types, sizes -----------------------------------------------------------------------
def test_writes_are_post_only_with_json(gw: Any) -> None:
    resp, sock, _ = _exchange(gw.http_port, b"GET /api/ratings?user_id=1&movie_id=1&rating=5 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert resp is not None and resp[0] == 405 and "POST" in json.loads(resp[2])["error"] and resp[1]["allow"] == "POST"
    sock.close()
    body = json.dumps({"user_id": 1, "movie_id": 1, "rating": 5}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        resp, sock, _ = _exchange(gw.http_port, _post("/api/ratings", body, content_type))
        assert resp is not None and resp[0] == 415 and "application/json" in json.loads(resp[2])["error"]
        sock.close()


def test_no_length_is_411_and_too_long_is_413_and_both_close(gw: Any) -> None:
    resp, sock, buf = _exchange(gw.http_port, b"POST /api/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                                              b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert resp is not None and resp[0] == 411 and "Content-Length" in json.loads(resp[2])["error"]
    assert _closed(sock, buf)
    sock.close()
    limit = gw.gateway.cfg.serving.http_max_body_bytes
    sock = _connect(gw.http_port)
    sock.sendall(f"POST /api/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {limit + 1}\r\n\r\n".encode() + b"[" * 1000)
    buf = bytearray()
    resp = _read_response(sock, buf)
    assert resp is not None and resp[0] == 413 and resp[1].get("connection") == "close"
    assert _closed(sock, buf)
    sock.close()


def test_unknown_paths_and_methods(gw: Any) -> None:
    resp, sock, _ = _exchange(gw.http_port, _post("/api/nothing", b"{}"))
    assert resp is not None and resp[0] == 404 and json.loads(resp[2])["code"] == "NOT_FOUND"
    sock.close()
    resp, sock, _ = _exchange(gw.http_port, b"DELETE /api/recommend HTTP/1.1\r\nHost: t\r\n\r\n")
    assert resp is not None and resp[0] == 405
    sock.close()
    resp, sock, _ = _exchange(gw.http_port, b"GET /no/such/page HTTP/1.1\r\nHost: t\r\n\r\n")
    assert resp is not None and resp[0] == 404 and b"<h1>" in resp[2]
    sock.close()


# --- slow, partial and idle connections (closed by the server's read timeout) ------------------
@pytest.mark.parametrize("partial, status", [
    (b"", None),                                                        # connected, silent
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\n", 408),                     # half a head
    (b"POST /api/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
     b"Content-Length: 100\r\n\r\n{\"user_id\": 1", 408),              # half a body
])
def test_partial_requests_are_closed_by_the_server(gw: Any, partial: bytes, status: int | None) -> None:
    sock = _connect(gw.http_port)
    sock.sendall(partial)
    buf = bytearray()
    assert _closed(sock, buf), "the server kept a partial request open"
    if status is not None:
        assert bytes(buf).startswith(f"HTTP/1.1 {status}".encode())
    sock.close()


def test_dribbled_bytes_do_not_extend_the_read_budget(gw: Any) -> None:
    import time

    sock = _connect(gw.http_port)
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 400
    buf = bytearray()
    closed = False
    for i in range(len(head)):             # one byte every 50 ms: 20 s in all, far past the budget
        try:
            sock.sendall(head[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.05)
    assert closed or _closed(sock, buf)
    sock.close()


def test_idle_keep_alive_connections_are_closed(gw: Any) -> None:
    sock = _connect(gw.http_port)
    buf = bytearray()
    assert _healthz_still_answers(sock, buf)
    assert _closed(sock, buf)
    sock.close()


# --- a bounded fuzz: every malformed request gets an answer, never a 500 ---------------------------
def test_bounded_fuzz_never_500_never_dropped(gw: Any) -> None:
    rng = random.Random(12)
    values: list[Any] = [None, True, -1, 0, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 30, 1.5, 1e308, -0.0, "", "7", "x" * 300,
                         [], [1, "a"], {}, {"a": {"b": []}}, "Drama", ["Drama", "Sci-Fi"]]
    fields = ["user_id", "movie_id", "k", "rating", "timestamp", "genres", "movie_ids", "exclude_seen", "explain", "zzz"]
    paths = ["/api/recommend", "/api/rank", "/api/similar", "/api/ratings"]
    sock = _connect(gw.http_port)
    buf = bytearray()
    for i in range(150):
        body = {rng.choice(fields): rng.choice(values) for _ in range(rng.randint(0, 4))}
        raw = json.dumps(body).encode()
        if i % 10 == 0:
            raw = raw[: rng.randint(0, len(raw))]      # truncated JSON
        try:
            sock.sendall(_post(rng.choice(paths), raw))
            resp = _read_response(sock, buf)
        except (BrokenPipeError, ConnectionResetError):
            resp = None
        if resp is None:                               # the keep-alive budget may end a connection between cases
            sock.close()
            sock, buf = _connect(gw.http_port), bytearray()
            sock.sendall(_post(paths[0], raw))
            resp = _read_response(sock, buf)
        assert resp is not None, f"case {i} got no answer: {raw[:80]!r}"
        assert resp[0] in (200, 400, 404, 503), (i, resp)
        assert json.loads(resp[2])
    sock.close()


# --- tokens, exposure, logs ----------------------------------------------------------------------
def test_bearer_token_guards_api_and_grpc(redis_srv: Any, tmp_path: Path) -> None:
    running = start_gateway(_config(tmp_path, redis_srv.url, api_token="s3cret-token"), redis_srv.url, "127.0.0.1:1")
    try:
        body = json.dumps({"user_id": 1, "movie_id": 1, "rating": 4}).encode()
        resp, sock, _ = _exchange(running.http_port, _post("/api/ratings", body))
        assert resp is not None and resp[0] == 401 and resp[1].get("www-authenticate", "").startswith("Bearer")
        sock.close()
        resp, sock, _ = _exchange(running.http_port, _post("/api/ratings", body, extra="Authorization: Bearer wrong\r\n"))
        assert resp is not None and resp[0] == 401
        sock.close()
        resp, sock, _ = _exchange(running.http_port, _post("/api/ratings", body,
                                                           extra="Authorization: Bearer s3cret-token\r\n"))
        assert resp is not None and resp[0] == 200 and json.loads(resp[2])["event_id"]
        sock.close()
        with grpc.insecure_channel(running.grpc_target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordRating(pb.RecordRatingRequest(user_id=1, movie_id=1, rating=4), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.RecordRating(pb.RecordRatingRequest(user_id=1, movie_id=1, rating=4), timeout=10,
                                   metadata=[("authorization", "Bearer s3cret-token")])
            assert ok.event_id
    finally:
        running.stop()


def test_serving_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    check_exposure(cfg)                                              # the default: loopback
    with pytest.raises(ValueError, match="api_token"):
        check_exposure(cfg.replace("serving", bind="0.0.0.0"))
    check_exposure(cfg.replace("serving", bind="0.0.0.0", api_token="t"))


def test_access_log_is_one_json_object_per_request(gw: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recsys.access"):
        resp, sock, _ = _exchange(gw.http_port, _post("/api/similar", b'{"movie_id": -4}'))
        sock.close()
        assert resp is not None and resp[0] == 400
        import time

        end = time.monotonic() + 5
        while time.monotonic() < end and not [r for r in caplog.records if r.name == "recsys.access"]:
            time.sleep(0.05)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "recsys.access"]
    hit = [x for x in lines if x["path"] == "/api/similar"]
    assert hit and hit[-1]["status"] == 400 and hit[-1]["method"] == "POST" and hit[-1]["client"] == "127.0.0.1"
    assert hit[-1]["bytes"] > 0 and hit[-1]["ms"] >= 0

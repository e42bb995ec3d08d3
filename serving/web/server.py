"""The HTTP server: uvicorn (h11) on a socket bound here, with the guards h11 alone lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), concurrent
connections (``limit_concurrency``, 503 beyond) and the size of a request head
(``h11_max_incomplete_event_size``). Two holes remain, closed by ``GuardedH11Protocol``:

* **no read timeout**: a client that opens a connection and sends nothing, half a
  head or half a body holds it (and a file descriptor) forever. Here every request
  must arrive whole within ``read_timeout`` seconds of its first byte (or of the
  connection), else 408 and close; the budget is not extended by dribbled bytes.
* **lenient framing**: h11 merges repeated identical ``Content-Length`` headers (and
  ``5, 5`` lists) and, given ``Transfer-Encoding`` too, silently ignores the length.
  RFC 9112 (sections 6.1 and 6.3) calls both a request-smuggling risk; here both are a
  400 with ``Connection: close`` before the application sees the request.

Example::

    server = start_http(app, "127.0.0.1", 0, cfg.serving)   # returns once it listens
    server.port; server.stop()
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.config import ServingConfig

log = logging.getLogger("recsys.http")
MAX_HEAD_BYTES = 16 * 1024
_FIELD = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*:(.*)$")


def framing_problem(head: bytes) -> str | None:
    """Why a raw request head (request line + fields, no final CRLF CRLF) must be refused, or None.

    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: 2\\r\\nContent-Length: 2")
    'more than one Content-Length'
    """
    lengths = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        match = _FIELD.match(line)
        if not match:
            continue  # h11 itself rejects malformed field lines
        name = match.group(1).lower()
        if name == b"content-length":
            lengths += 1 + match.group(2).count(b",")
        elif name == b"transfer-encoding":
            chunked = True
    if lengths > 1:
        return "more than one Content-Length"
    if lengths and chunked:
        return "both Content-Length and Transfer-Encoding"
    return None


def _raw_reply(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a whole-request read timeout and strict message framing."""

    read_timeout: float = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE:
            buffered, _ = self.conn.trailing_data
            end = buffered.find(b"\r\n\r\n")
            if end >= 0:
                problem = framing_problem(buffered[:end])
                if problem is not None:
                    log.warning("refused request from %s: %s", self.client, problem)
                    self._close_with(400, "Bad Request", f"refused: {problem} (RFC 9112 section 6)")
                    return
        super().handle_events()
        if self.transport.is_closing():
            return
        waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)  # a head or a body is still due
        if waiting and (self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]):
            self._arm_read_timer()
        elif not waiting:
            self._cancel_read_timer()

    def on_response_complete(self) -> None:
        self._cancel_read_timer()  # the keep-alive timer takes over until the next request's first byte
        super().on_response_complete()

    def _arm_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE and not self.conn.trailing_data[0] and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing was sent: just hang up
        elif state in (h11.IDLE, h11.SEND_BODY):
            log.info("closed a request from %s after %.1f s without a complete request", self.client, self.read_timeout)
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            if self.cycle is None or not self.cycle.response_started:
                self._close_with(408, "Request Timeout", f"the request did not arrive within {self.read_timeout:g} s")
            else:
                self.transport.close()

    def _close_with(self, status: int, reason: str, message: str) -> None:
        self._cancel_read_timer()
        self.transport.write(_raw_reply(status, reason, message))
        self.transport.close()


@dataclass
class HttpServer:
    """A uvicorn server on its own thread and event loop; ``stop()`` ends it."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def protocol_class(read_timeout: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11", (GuardedH11Protocol,), {"read_timeout": float(read_timeout)})


def start_http(app: Any, bind: str, port: int, s: ServingConfig, start_timeout: float = 10.0) -> HttpServer:
    """Listen on ``bind:port`` (0 = any free port) and serve ``app``; returns once the server accepts.

    The socket is bound here, so a port in use fails at once with ``OSError``.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"HTTP cannot listen on {bind}:{port} (in use?): {exc}") from None
    tls = {"ssl_certfile": s.tls_certfile, "ssl_keyfile": s.tls_keyfile} if s.tls_certfile else {}
    config = uvicorn.Config(app, http=protocol_class(s.http_read_timeout_seconds), lifespan="off", log_config=None,
                            access_log=False, server_header=False, timeout_keep_alive=s.http_keep_alive_seconds,
                            limit_concurrency=s.http_max_connections, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                            timeout_graceful_shutdown=2, **tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    thread.start()
    waited = 0.0
    while not server.started and thread.is_alive() and waited < start_timeout:
        threading.Event().wait(0.02)
        waited += 0.02
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OSError(f"the HTTP server on {bind}:{port} did not start")
    return HttpServer(server, thread, sock.getsockname()[1])

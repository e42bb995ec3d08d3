"""Sessions, CSRF tokens and the sign-in rate limit of the web pages.

* The session is a cookie signed with ``itsdangerous`` (HMAC-SHA1 over the JSON payload
  and a timestamp; expired after ``web.session_days``): ``HttpOnly``, ``SameSite=Lax``,
  and ``Secure`` whenever the request came over TLS. It holds the signed-in user id and
  a random CSRF token, nothing secret.
* Every form carries that token (``csrf`` field, or the ``x-csrf-token`` header for
  htmx); a POST without the matching token is refused with 403.
* Failed sign-ins are counted per account name and per client address in a sliding
  window; past the limit the next attempt is 429 without checking the password.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.home import secret_file

COOKIE = "recsys_session"


def session_secret(configured: str, key_file: Path) -> str:
    """The configured key, else one generated once into ``key_file`` (mode 0600) and reused."""
    return configured or secret_file(key_file, nbytes=48)


class SessionMiddleware:
    """Loads the signed cookie into ``scope["session"]`` (a dict) and writes it back when it changed."""

    def __init__(self, app: ASGIApp, secret: str, max_age_days: int) -> None:
        self.app = app
        self.signer = URLSafeTimedSerializer(secret, salt="recsys-session")
        self.max_age = max_age_days * 86400

    def _load(self, scope: Scope) -> dict[str, Any]:
        for name, value in scope["headers"]:
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    key, _, raw = part.strip().partition("=")
                    if key == COOKIE and raw:
                        try:
                            data = self.signer.loads(raw, max_age=self.max_age)
                        except (BadSignature, ValueError):
                            return {}
                        return data if isinstance(data, dict) else {}
        return {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NO_SESSION):
            await self.app(scope, receive, send)
            return
        session = self._load(scope)
        before = json.dumps(session, sort_keys=True)
        scope["session"] = session

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and json.dumps(session, sort_keys=True) != before:
                attrs = f"Path=/; HttpOnly; SameSite=Lax; Max-Age={self.max_age if session else 0}"
                if scope.get("scheme") == "https":
                    attrs += "; Secure"
                value = self.signer.dumps(session) if session else ""
                message.setdefault("headers", []).append((b"set-cookie", f"{COOKIE}={value}; {attrs}".encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


# Not pages: service callers and static files neither read nor get a session cookie.
NO_SESSION = ("/api/", "/healthz", "/metrics", "/static/", "/poster/")


def csrf_token(session: dict[str, Any]) -> str:
    """The session's CSRF token, created on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return str(session["csrf"])


def csrf_ok(session: dict[str, Any], given: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and given) and hmac.compare_digest(str(expected).encode(), str(given).encode())


class LoginLimiter:
    """At most ``attempts`` failures per key within ``window`` seconds (sliding), thread-safe, in memory."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts, self.window = attempts, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str, limit: int | None = None) -> bool:
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= (limit or self.attempts)

    def fail(self, key: str) -> None:
        with self._lock:
            self._recent(key, time.monotonic()).append(time.monotonic())
            if len(self._failures) > 100_000:  # bounded memory: forget the quietest keys
                for k in [k for k, q in self._failures.items() if not q][:50_000]:
                    del self._failures[k]

    def reset(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

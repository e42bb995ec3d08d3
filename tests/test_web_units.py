"""Pure pieces of the web side: framing checks, posters, profiles, the sign-in limiter, accounts
(a real SQLite file through SQLAlchemy, real argon2id), session cookies."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline.recall import RecallContext
from serving.auth import bearer_ok
from serving.profile import Profile, with_profile
from serving.web.accounts import AccountError, AccountStore
from serving.web.posters import poster_svg
from serving.web.security import LoginLimiter, csrf_ok, csrf_token, session_secret
from serving.web.server import framing_problem


@pytest.mark.parametrize("head, problem", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", None),
    (b"POST / HTTP/1.1\r\ncontent-length: 3\r\nCONTENT-LENGTH: 3", "more than one Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3,3", "more than one Content-Length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked", "both Content-Length and Transfer-Encoding"),
])
def test_framing_problem(head: bytes, problem: str | None) -> None:
    assert framing_problem(head) == problem


def test_poster_is_valid_svg_with_escaped_text() -> None:
    svg = poster_svg(7, 'Tom & Jerry <"Live">: A Very Long Title Indeed', 1999, ["Comedy", "Animation"])
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and root.get("role") == "img"
    text = "".join(root.itertext())
    assert "Tom & Jerry" in text and "1999" in text and "Comedy" in text
    assert poster_svg(7, "x", None, []) == poster_svg(7, "x", None, [])       # stable


def test_profile_fills_only_gaps() -> None:
    ctx = RecallContext(user_id=1)
    ctx2, feats = with_profile(ctx, {}, Profile(age_bucket=25, gender="F", interest_genres=["Sci-Fi"]))
    assert (ctx2.age_bucket, ctx2.gender, ctx2.top_genres) == (25, "F", ["Sci-Fi"])
    assert feats["top_genres"] == ["Sci-Fi"]
    known = RecallContext(user_id=1, age_bucket=35, gender="M", top_genres=["Drama"])
    ctx3, feats3 = with_profile(known, {"age_bucket": 35, "gender": "M"}, Profile(age_bucket=25, interest_genres=["War"]))
    assert (ctx3.age_bucket, ctx3.top_genres, feats3["age_bucket"]) == (35, ["Drama"], 35)
    assert with_profile(ctx, {}, None) == (ctx, {})


def test_login_limiter_window() -> None:
    lim = LoginLimiter(attempts=2, window=0.3)
    assert not lim.blocked("a")
    lim.fail("a")
    lim.fail("a")
    assert lim.blocked("a") and not lim.blocked("b")
    import time

    time.sleep(0.35)
    assert not lim.blocked("a")
    lim.fail("a")
    lim.reset("a")
    assert not lim.blocked("a", 1)


def test_accounts_hash_ids_and_tags(tmp_path: Path) -> None:
    taken = {1000, 1001}
    store = AccountStore(f"sqlite:///{tmp_path / 'a.db'}", id_base=1000, is_dataset_user=lambda uid: uid in taken)
    ada = store.create("ada", "correct horse", age_bucket=25, gender="F")
    assert ada.user_id == 1002                                       # never a dataset user's id
    bob = store.create("bob.b", "another secret")
    assert bob.user_id == 1003
    from sqlalchemy import text

    with store.engine.connect() as conn:
        hashed = conn.execute(text("select password_hash from accounts where username='ada'")).scalar()
    assert hashed.startswith("$argon2id$") and "correct" not in hashed
    assert store.verify("ada", "correct horse") == ada
    assert store.verify("ada", "wrong horse") is None and store.verify("nobody", "x" * 9) is None
    for bad in [("a", "longenough"), ("ada", "correct horse"), ("carl", "short"), ("x y z", "longenough")]:
        with pytest.raises(AccountError):
            store.create(*bad)
    with pytest.raises(AccountError, match="age group"):
        store.create("dan", "longenough", age_bucket=3)
    store.set_interests(ada.user_id, ["Sci-Fi", "Comedy"])
    assert store.get(ada.user_id).interest_genres == ["Comedy", "Sci-Fi"]
    with pytest.raises(AccountError, match="Polka"):
        store.set_interests(ada.user_id, ["Polka"])
    store.add_tag(ada.user_id, 5, "  Space   Opera ")
    store.add_tag(bob.user_id, 5, "space opera")
    store.add_tag(bob.user_id, 5, "space opera")                     # idempotent
    assert store.movie_tags(5) == [("space opera", 2)]
    assert store.user_tags(ada.user_id) == [(5, "space opera")]
    with pytest.raises(AccountError):
        store.add_tag(ada.user_id, 5, "<script>")
    store.close()


def test_session_secret_and_csrf(tmp_path: Path) -> None:
    key = tmp_path / "web" / "session.key"
    first = session_secret("", key)
    assert len(first) > 40 and session_secret("", key) == first and (key.stat().st_mode & 0o777) == 0o600
    assert session_secret("configured", key) == "configured"
    session: dict = {}
    token = csrf_token(session)
    assert csrf_ok(session, token) and not csrf_ok(session, token + "x") and not csrf_ok({}, token)
    assert not csrf_ok(session, None)


def test_bearer_ok() -> None:
    assert bearer_ok(None, "") and bearer_ok("Bearer t0k", "t0k") and bearer_ok("bearer t0k", "t0k")
    assert not bearer_ok(None, "t0k") and not bearer_ok("Bearer nope", "t0k") and not bearer_ok("Basic t0k", "t0k")


def test_session_cookie_flags_and_tampering() -> None:
    import asyncio

    from serving.web.security import COOKIE, SessionMiddleware

    async def app(scope: dict, receive: object, send: object) -> None:
        scope["session"]["uid"] = 7
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    def run(scheme: str, cookie: str | None = None) -> tuple[list, dict]:
        sent: list = []
        seen: dict = {}

        async def inner(scope: dict, receive: object, send: object) -> None:
            seen.update(scope["session"])
            await app(scope, receive, send)

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else []
        mw = SessionMiddleware(inner, "k" * 32, 1)
        asyncio.run(mw({"type": "http", "path": "/me", "scheme": scheme, "headers": headers}, None, send))
        return [v.decode() for k, v in sent[0]["headers"] if k == b"set-cookie"], seen

    cookies, _ = run("http")
    assert len(cookies) == 1 and "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0] and "Secure" not in cookies[0]
    tls, _ = run("https")
    assert "Secure" in tls[0]
    value = cookies[0].split(";")[0].split("=", 1)[1]
    _, seen = run("http", value)
    assert seen == {"uid": 7}                                   # a signed cookie round-trips
    _, seen = run("http", value[:-2] + ("aa" if not value.endswith("aa") else "bb"))
    assert seen == {}                                           # a tampered one is ignored

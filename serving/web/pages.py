"""The server-rendered pages (Jinja2 + a vendored htmx): thin handlers over ``Site`` and ``Gateway``.

Writes from a page (ratings, tags, interests) act only as the signed-in user of the
session and only with the session's CSRF token; every query value is checked and a bad
one is a 400 page naming it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.schemas import AGE_BUCKETS, GENRES, OCCUPATIONS
from serving.gateway import Gateway, InvalidArgument, NotFound, Unavailable
from serving.web.accounts import Account, AccountError, AccountStore
from serving.web.api import INT64, int_field
from serving.web.posters import poster_svg
from serving.web.security import LoginLimiter, csrf_ok, csrf_token
from serving.web.site import Site, profile_of

log = logging.getLogger("recsys.web")
TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 16 * 1024
RECS_K = 12
POLL_AFTER_RATING_S = 60
HOME_CACHE_S = 5.0


class PageError(Exception):
    def __init__(self, status: int, heading: str, message: str) -> None:
        super().__init__(message)
        self.status, self.heading = status, heading


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


class Pages:
    def __init__(self, gateway: Gateway, accounts: AccountStore, limiter: LoginLimiter) -> None:
        self.gw, self.accounts, self.limiter = gateway, accounts, limiter
        self.site = Site(gateway)
        self.web = gateway.cfg.web
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                               auto_reload=False)
        self.env.filters["date"] = _date
        self._rows_cache: tuple[Any, float, Markup] | None = None

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    def user(request: Request) -> dict[str, Any] | None:
        s = request.scope.get("session") or {}
        return {"uid": int(s["uid"]), "name": s.get("name", ""), "demo": bool(s.get("demo"))} if s.get("uid") else None

    def account(self, request: Request) -> Account | None:
        user = self.user(request)
        return self.accounts.get(user["uid"]) if user and not user["demo"] else None

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session = request.scope.setdefault("session", {})
        try:
            batch, degraded = self.site.view().store.version, False
        except Unavailable:
            batch, degraded = None, True
        html = self.env.get_template(name).render(user=self.user(request), csrf=csrf_token(session),
                                                  demo=self.web.demo, batch_version=batch, degraded=degraded, **ctx)
        return HTMLResponse(html, status_code=status)

    def _sign_in(self, request: Request, uid: int, name: str, demo: bool = False) -> None:
        session = request.scope["session"]
        session.clear()  # a new session (and CSRF token) on every sign-in: no fixation
        session.update(uid=uid, name=name, demo=demo)
        csrf_token(session)

    async def form(self, request: Request) -> FormData:
        """The posted form after the CSRF check; 413 / 403 before anything else happens."""
        length = request.headers.get("content-length")
        if length is None or int(length) > MAX_FORM_BYTES:
            raise PageError(413 if length else 411, "Form too large" if length else "Length required",
                            f"a form must say its length and stay under {MAX_FORM_BYTES} bytes")
        try:
            form = await request.form(max_files=0, max_fields=64)
        except ClientDisconnect:
            raise PageError(408, "Too slow", "the form did not arrive in time") from None
        token = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf_ok(request.scope.get("session") or {}, token if isinstance(token, str) else None):
            raise PageError(403, "Form expired", "this form's security token is missing or stale: reload the page "
                                                 "and try again")
        return form

    def need_user(self, request: Request) -> dict[str, Any]:
        user = self.user(request)
        if user is None:
            raise PageError(401, "Sign in first", "this page needs you to be signed in")
        return user

    # --- pages -------------------------------------------------------------------------------
    def home(self, request: Request) -> Response:
        return self.render(request, "home.html", page="home", rows=self._home_rows())

    def _home_rows(self) -> Markup:
        """The rows of the home page: the same for everyone, rendered once per version and trending list (5 s at most)."""
        site = self.site
        trending = site.trending()
        key = (site.view().store.version, tuple(m.movie_id for m in trending))
        cached = self._rows_cache
        if cached and cached[0] == key and time.monotonic() - cached[1] < HOME_CACHE_S:
            return cached[2]
        genre_rows = [(g, site.toprated(g, 8), site.popular(g, 8)) for g in site.genres_with_movies()]
        html = Markup(self.env.get_template("_home_rows.html").render(
            trending=trending, toprated=site.toprated(), popular=site.popular(), genre_rows=genre_rows))
        self._rows_cache = (key, time.monotonic(), html)
        return html

    def search(self, request: Request) -> Response:
        q = request.query_params
        words = q.get("q", "")[:100]
        genre = q.get("genre") or None
        if genre is not None and genre not in GENRES:
            raise InvalidArgument(f"genre must be one of {', '.join(GENRES)}")
        year = int_field(dict(q), "year", 0, (0, 3000)) if q.get("year") else None
        page = int_field(dict(q), "page", 1, (1, 100_000))
        result = self.site.search(words, genre, year, page, self.web.page_size)

        def page_url(n: int) -> str:
            return "/search?" + urlencode({k: v for k, v in (("q", words), ("genre", genre or ""),
                                                             ("year", year or ""), ("page", n)) if v})
        return self.render(request, "search.html", page="search", q=words, genre=genre, year=year, genres=GENRES,
                           result=result, page_url=page_url)

    def movie(self, request: Request) -> Response:
        movie_id = int_field(request.path_params, "movie_id", bounds=(1, INT64[1]))
        m = self.site.movie(movie_id)
        if m is None:
            raise NotFound(f"no movie with id {movie_id}")
        user = self.user(request)
        predicted = None
        if user:
            answer = self.gw.rank(user["uid"], [movie_id], profile=profile_of(self.account(request)))
            predicted = answer.items[0].predicted_rating if answer.items and not answer.degraded else None
        similar = self.site.movies([i.movie_id for i in self.gw.similar(movie_id, 10).items])
        rated = request.query_params.get("rated")
        return self.render(request, "movie.html", m=m, predicted=predicted, similar=similar,
                           also=self.site.also_liked(movie_id), tags=self.accounts.movie_tags(movie_id),
                           rated=int(rated) if rated in ("1", "2", "3", "4", "5") else None)

    def recs_context(self, request: Request, user: dict[str, Any]) -> dict[str, Any]:
        answer = self.gw.recommend(user["uid"], RECS_K, profile=profile_of(self.account(request)))
        movies = {m.movie_id: m for m in self.site.movies([i.movie_id for i in answer.items])}
        rated_at = float((request.scope.get("session") or {}).get("rated_at") or 0)
        return {"answer": answer, "movies": movies, "poll": time.time() - rated_at < POLL_AFTER_RATING_S}

    def me(self, request: Request) -> Response:
        user = self.user(request)
        if user is None:
            return RedirectResponse("/signin?next=/me", status_code=303)
        account = self.account(request)
        history, favourites = self.site.history(user["uid"])
        return self.render(request, "me.html", page="me", account=account, history=history[:50], favourites=favourites,
                           interests=account.interest_genres if account else [],
                           my_tags=self.accounts.user_tags(user["uid"]), **self.recs_context(request, user))

    def recommendations(self, request: Request) -> Response:
        user = self.need_user(request)
        html = self.env.get_template("_recs.html").render(**self.recs_context(request, user))
        return HTMLResponse(html)

    def poster(self, request: Request) -> Response:
        movie_id = int_field(request.path_params, "movie_id", bounds=(1, INT64[1]))
        m = self.site.movie(movie_id)
        if m is None:
            raise NotFound(f"no movie with id {movie_id}")
        return Response(poster_svg(m.movie_id, m.title, m.year, m.genres), media_type="image/svg+xml",
                        headers={"cache-control": "public, max-age=86400"})

    # --- writes ------------------------------------------------------------------------------
    async def rate(self, request: Request) -> Response:
        form = await self.form(request)
        user = self.need_user(request)
        movie_id = int_field(request.path_params, "movie_id", bounds=(1, INT64[1]))
        stars = int_field({"stars": form.get("stars")}, "stars", bounds=(1, 5))
        if await run_in_threadpool(self.site.movie, movie_id) is None:
            raise NotFound(f"no movie with id {movie_id}")
        await run_in_threadpool(self.gw.record_rating, user["uid"], movie_id, float(stars))
        request.scope["session"]["rated_at"] = int(time.time())
        if request.headers.get("hx-request"):
            word = "star" if stars == 1 else "stars"
            return HTMLResponse(f'Saved your rating of {stars} {word}. <a href="/me">Your list</a> updates within seconds.')
        return RedirectResponse(f"/movie/{movie_id}?rated={stars}", status_code=303)

    async def tag(self, request: Request) -> Response:
        form = await self.form(request)
        user = self.need_user(request)
        movie_id = int_field(request.path_params, "movie_id", bounds=(1, INT64[1]))
        if await run_in_threadpool(self.site.movie, movie_id) is None:
            raise NotFound(f"no movie with id {movie_id}")
        try:
            await run_in_threadpool(self.accounts.add_tag, user["uid"], movie_id, str(form.get("tag") or ""))
        except AccountError as exc:
            raise InvalidArgument(f"tag: {exc}") from None
        return RedirectResponse(f"/movie/{movie_id}", status_code=303)

    async def interests(self, request: Request) -> Response:
        account = await run_in_threadpool(self.account, request)
        if account is None:
            return RedirectResponse("/signin?next=/interests", status_code=303)
        if request.method == "POST":
            form = await self.form(request)
            chosen = [str(g) for g in form.getlist("genre")]
            try:
                await run_in_threadpool(self.accounts.set_interests, account.user_id, chosen)
            except AccountError as exc:
                return await run_in_threadpool(lambda: self.render(request, "interests.html", 400, genres=GENRES,
                                                                   chosen=chosen, error=str(exc)))
            return RedirectResponse("/me", status_code=303)
        return await run_in_threadpool(lambda: self.render(request, "interests.html", genres=GENRES,
                                                           chosen=account.interest_genres, error=None))

    async def signup(self, request: Request) -> Response:
        ages = list(AGE_BUCKETS.items())
        if request.method == "GET":
            return self.render(request, "signup.html", page="signup", ages=ages, occupations=OCCUPATIONS, form={},
                               error=None)
        form = await self.form(request)
        fields = {k: str(form.get(k) or "") for k in ("username", "password", "age_bucket", "gender", "occupation")}
        try:
            age = int_field(fields, "age_bucket", bounds=(0, 100)) if fields["age_bucket"] else None
            account = await run_in_threadpool(self.accounts.create, fields["username"], fields["password"], age,
                                              fields["gender"] or None, fields["occupation"] or None)
        except (AccountError, InvalidArgument) as exc:
            fields.pop("password")
            return self.render(request, "signup.html", 400, page="signup", ages=ages, occupations=OCCUPATIONS,
                               form=fields, error=str(exc))
        self._sign_in(request, account.user_id, account.username)
        return RedirectResponse("/interests", status_code=303)

    async def signin(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/me")
        if request.method == "GET":
            return self.render(request, "signin.html", page="signin", next=_safe_next(nxt), username="", error=None)
        form = await self.form(request)
        username, password = str(form.get("username") or "")[:64], str(form.get("password") or "")[:256]
        nxt = _safe_next(str(form.get("next") or "/me"))
        address = request.client.host if request.client else "?"
        keys = (f"account:{username.lower()}", f"address:{address}")
        if self.limiter.blocked(keys[0]) or self.limiter.blocked(keys[1], 4 * self.limiter.attempts):
            return self.render(request, "signin.html", 429, page="signin", next=nxt, username=username,
                               error="too many failed sign-ins: wait a few minutes and try again")
        account = await run_in_threadpool(self.accounts.verify, username, password)
        if account is None:
            for key in keys:
                self.limiter.fail(key)
            return self.render(request, "signin.html", 401, page="signin", next=nxt, username=username,
                               error="wrong username or password")
        self.limiter.reset(keys[0])
        self._sign_in(request, account.user_id, account.username)
        return RedirectResponse(nxt, status_code=303)

    async def signout(self, request: Request) -> Response:
        await self.form(request)
        request.scope["session"].clear()
        return RedirectResponse("/", status_code=303)

    async def demo(self, request: Request) -> Response:
        await self.form(request)
        if not self.web.demo:
            raise PageError(404, "No demo here", "the demo mode is switched off on this site (web.demo)")
        uid = await run_in_threadpool(self.site.demo_user)
        self._sign_in(request, uid, f"demo user {uid}", demo=True)
        return RedirectResponse("/me", status_code=303)

    # --- routing -----------------------------------------------------------------------------
    def error_page(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, PageError):
            status, heading, message = exc.status, exc.heading, str(exc)
        elif isinstance(exc, InvalidArgument):
            status, heading, message = 400, "Bad request", str(exc)
        elif isinstance(exc, NotFound):
            status, heading, message = 404, "Not found", str(exc)
        elif isinstance(exc, Unavailable):
            status, heading, message = 503, "Not available yet", str(exc)
        elif isinstance(exc, HTTPException):  # Starlette's own refusals, e.g. a malformed multipart form
            status, heading, message = exc.status_code, "Bad request", str(exc.detail)
        else:
            log.exception("%s %s failed", request.method, request.url.path)
            status, heading, message = 500, "Something broke", "the page failed; the server log has the details"
        if status == 401:
            return RedirectResponse(f"/signin?next={request.url.path}", status_code=303)
        try:
            return self.render(request, "error.html", status, heading=heading, message=message)
        except Exception:  # noqa: BLE001 - the error page itself must not fail
            return HTMLResponse(f"<h1>{status}</h1>", status_code=status)

    def routes(self) -> list[Route]:
        def guarded(fn: Callable[[Request], Any], threaded: bool) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                try:
                    if threaded:
                        return await run_in_threadpool(fn, request)
                    return await fn(request)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a page
                    return await run_in_threadpool(self.error_page, request, exc)
            return endpoint

        get = [("/", self.home), ("/search", self.search), ("/movie/{movie_id}", self.movie), ("/me", self.me),
               ("/me/recommendations", self.recommendations), ("/poster/{movie_id}.svg", self.poster)]
        post = [("/movie/{movie_id}/rate", self.rate), ("/movie/{movie_id}/tag", self.tag), ("/signout", self.signout),
                ("/demo", self.demo)]
        both = [("/signup", self.signup), ("/signin", self.signin), ("/interests", self.interests)]
        return ([Route(p, guarded(f, True), methods=["GET"]) for p, f in get]
                + [Route(p, guarded(f, False), methods=["POST"]) for p, f in post]
                + [Route(p, guarded(f, False), methods=["GET", "POST"]) for p, f in both])


def _safe_next(target: str) -> str:
    """Only a local path may follow a sign-in (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/me"

"""What the pages read: movies, lists and a user's history, from the gateway's current batch view.

One place reaches into the gateway's published view (catalog and store) for the pages,
so the page handlers stay thin and a change of the gateway's storage touches only this
file. Everything a page shows about recommendations, ranks and similar movies goes
through the ``Gateway`` calls themselves (the same answers as gRPC and /api).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Sequence

import redis

from pipeline import keys as K
from pipeline.schemas import GENRES
from pipeline.store import StoreUnavailable
from serving.catalog import Movie
from serving.gateway import Gateway, Unavailable
from serving.versions import BatchView
from serving.profile import Profile
from serving.web.accounts import Account

ROW = 10
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, StoreUnavailable)  # the store could not be read


@dataclass(frozen=True)
class Rated:
    movie: Movie
    rating: float
    ts: int


@dataclass(frozen=True)
class SearchPage:
    movies: list[Movie]
    total: int
    page: int
    pages: int


class Site:
    """Read helpers over the gateway's current ``BatchView`` (with a small per-version title index)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._index: tuple[str, list[tuple[str, Movie]]] | None = None
        self._lock = threading.Lock()

    def view(self) -> BatchView:
        try:
            return self.gw.versions.view()
        except STORE_ERRORS:
            last = self.gw.versions.last_good
            if last is None:
                raise Unavailable("Redis is unreachable and nothing was read before") from None
            return last
        except Exception as exc:  # NotPublished
            raise Unavailable(str(exc)) from None

    def movie(self, movie_id: int) -> Movie | None:
        return self.view().catalog.movies.get(movie_id)

    def movies(self, ids: Sequence[int]) -> list[Movie]:
        movies = self.view().catalog.movies
        return [movies[m] for m in ids if m in movies]

    def _list(self, name: str, n: int) -> list[Movie]:
        view = self.view()
        try:
            scored = view.store.global_list(name)
        except STORE_ERRORS:
            scored = view.catalog.popular
        return self.movies([m for m, _ in scored[:n]])

    def popular(self, genre: str | None = None, n: int = ROW) -> list[Movie]:
        return self._list(K.list_popular(genre), n)

    def toprated(self, genre: str | None = None, n: int = ROW) -> list[Movie]:
        return self._list(K.list_toprated(genre), n)

    def trending(self, n: int = ROW) -> list[Movie]:
        try:
            return self.movies([m for m, _ in self.view().store.trending(n)])
        except STORE_ERRORS:
            return []

    def also_liked(self, movie_id: int, n: int = ROW) -> list[Movie]:
        """What the people who rated this movie rated next (the batch plane's 'next' lists)."""
        try:
            scored = self.view().store.item_lists("next", [movie_id]).get(movie_id, [])
        except STORE_ERRORS:
            return []
        return self.movies([m for m, _ in scored if m != movie_id][:n])

    def genres_with_movies(self) -> list[str]:
        by_genre = self.view().catalog.popular_by_genre
        return [g for g in GENRES if by_genre.get(g)]

    # --- search -----------------------------------------------------------------------------
    def _title_index(self) -> list[tuple[str, Movie]]:
        view = self.view()
        with self._lock:
            if self._index is None or self._index[0] != view.catalog.version:
                movies = sorted(view.catalog.movies.values(), key=lambda m: (-m.n_ratings, m.movie_id))
                self._index = (view.catalog.version, [(m.title.lower(), m) for m in movies])
            return self._index[1]

    def search(self, words: str, genre: str | None, year: int | None, page: int, size: int) -> SearchPage:
        """Movies whose title has every word, of ``genre`` and ``year`` when given; most rated first."""
        tokens = [w for w in words.lower().split() if w]
        hits = [m for title, m in self._title_index()
                if all(t in title for t in tokens) and (not genre or genre in m.genres) and (not year or m.year == year)]
        pages = max(1, -(-len(hits) // size))
        page = min(max(1, page), pages)
        return SearchPage(hits[(page - 1) * size:page * size], len(hits), page, pages)

    # --- users ------------------------------------------------------------------------------
    def history(self, user_id: int) -> tuple[list[Rated], list[str]]:
        """The user's ratings, newest first (batch + stream), and their favourite genres."""
        view = self.view()
        try:
            ctx, feats = view.store.user_context(user_id)
        except STORE_ERRORS:
            return [], []
        movies = view.catalog.movies
        rated = [Rated(movies[m], r, t) for m, r, t in reversed(ctx.history) if m in movies]
        favourites = list(feats.get("top_genres") or [])
        if not favourites and rated:
            weight: dict[str, float] = {}
            for r in rated:
                for g in r.movie.genres:
                    weight[g] = weight.get(g, 0.0) + r.rating - 2.5
            favourites = [g for g, w in sorted(weight.items(), key=lambda kv: -kv[1]) if w > 0][:5]
        return rated, favourites[:5]

    def is_dataset_user(self, user_id: int) -> bool:
        """Whether the batch plane published features or a history for this id."""
        ctx, feats = self.view().store.user_context(user_id)
        return bool(ctx.history) or any(k != "online" for k in feats)

    def demo_user(self) -> int:
        """A published dataset user with a history, picked at random among the first thousand ids."""
        store = self.view().store
        for uid in random.sample(range(1, 1000), 60):
            if store.user_context(uid)[0].history:
                return uid
        raise Unavailable("no dataset user with a history is published among ids 1-999")


def profile_of(account: Account | None) -> Profile | None:
    if account is None:
        return None
    return Profile(age_bucket=account.age_bucket, gender=account.gender, occupation=account.occupation,
                   interest_genres=list(account.interest_genres))

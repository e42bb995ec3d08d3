"""Static movie features of one published batch version, held in the gateway's memory.

Movie features change only when the batch plane publishes, so the gateway loads them
once per version (a few thousand hashes in a handful of pipelined round trips) and
answers every request from memory: titles, genres, years, title tokens and rating
statistics for the model's candidate inputs, and the popular list that answers when
Redis itself is down (the "last good" fallback).

Example::

    catalog = MovieCatalog.load(store)          # store: any pipeline.store.OnlineStore
    catalog.movie_inputs([1, 2, 3])              # -> model.signature.MovieInputs
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

from model.signature import MovieInputs
from pipeline import keys as K
from pipeline.schemas import GENRES
from pipeline.store import OnlineStore


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    genres: tuple[str, ...]
    year: int | None
    title_tokens: tuple[str, ...]
    n_ratings: int
    mean_rating: float
    bayes_rating: float
    popularity: float  # log1p(n_ratings), the model's statistic
    recommendable: bool = True  # rated after the 5-core filter; False: listed only (Rank scores it, recall never)


@dataclass
class MovieCatalog:
    version: str
    movies: dict[int, Movie]
    popular: list[tuple[int, float]] = field(default_factory=list)  # fallback when Redis is down
    popular_by_genre: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: OnlineStore) -> "MovieCatalog":
        """The version's listed movies and popular lists; ``StoreUnavailable`` when the store cannot be read.

        A movie's ``in_catalog`` field (rated after the batch plane's filter) says whether recall may propose it;
        every listed movie can be ranked and shown.
        """
        movies = {movie_id: _movie(movie_id, f, bool(f.get("in_catalog", True)))
                  for movie_id, f in store.movie_features().items()}
        by_genre = {g: store.global_list(K.list_popular(g)) for g in GENRES}
        return cls(version=store.version, movies=movies, popular=store.global_list(K.list_popular()),
                   popular_by_genre={g: lst for g, lst in by_genre.items() if lst})

    def __contains__(self, movie_id: int) -> bool:
        """Listed by the dataset (Rank, SimilarMovies and pages accept it); see :meth:`recommendable`."""
        return movie_id in self.movies

    def recommendable(self, movie_id: int) -> bool:
        """May appear in a recommendation list: listed and rated after the batch plane's filter."""
        return movie_id in self.recommendable_ids

    @cached_property
    def recommendable_ids(self) -> frozenset[int]:
        """Every recommendable movie id (the gateway filters ~2,000 recall entries a request against it)."""
        return frozenset(m for m, movie in self.movies.items() if movie.recommendable)

    def unknown(self, movie_ids: Sequence[int]) -> list[int]:
        """Ids outside the catalogue, each once, in the order given."""
        return list(dict.fromkeys(m for m in movie_ids if m not in self.movies))

    def title(self, movie_id: int) -> str:
        movie = self.movies.get(movie_id)
        return movie.title if movie else f"movie {movie_id}"

    def genres(self, movie_id: int) -> tuple[str, ...]:
        movie = self.movies.get(movie_id)
        return movie.genres if movie else ()

    def movie_inputs(self, movie_ids: Sequence[int]) -> MovieInputs:
        """The candidates' raw model inputs (unknown ids get empty features: the model's cold-movie path)."""
        rows = [self.movies.get(m) for m in movie_ids]
        return MovieInputs(
            movie_ids=list(movie_ids),
            genres=[list(r.genres) if r else [] for r in rows],
            years=[r.year if r else None for r in rows],
            title_tokens=[list(r.title_tokens) if r else [] for r in rows],
            popularity=[r.popularity if r else 0.0 for r in rows],
            mean_rating=[r.mean_rating if r else 0.0 for r in rows],
            bayes_rating=[r.bayes_rating if r else 0.0 for r in rows],
        )


def _number(value: object, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else default


def _movie(movie_id: int, f: dict, recommendable: bool = True) -> Movie:
    n = int(f.get("n_ratings") or 0)
    return Movie(movie_id=movie_id, title=str(f.get("title") or f"movie {movie_id}"),
                 genres=tuple(f.get("genres") or ()), year=int(f["year"]) if f.get("year") else None,
                 title_tokens=tuple(f.get("title_tokens") or ()), n_ratings=n,
                 mean_rating=_number(f.get("mean_rating")), bayes_rating=_number(f.get("bayes_rating")),
                 popularity=_number(f.get("popularity"), math.log1p(n)), recommendable=recommendable)

"""The serving signature: raw inputs the gateway sends, documented in model/README.md.

The exported model takes *raw* values (ids, strings, years, counts) and does every
raw -> index and scaling step in its own graph, with the vocabularies as assets:
a client never needs the vocabulary, and training and serving cannot disagree on an
encoding. The user context is sent once per request (``[B]`` / ``[B, H]``, B is
usually 1) and the candidates as a batch ``[B, N]``, so the sequence encoder runs once
per request.

``build_request`` turns plain Python/numpy user and movie data into that dict of
arrays; the evaluator uses it now and the gateway will.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from model.vocab import genre_multi_hot, left_pad, pad_tokens
from pipeline.schemas import GENRES

SIGNATURE_NAME = "serving_default"
NEXT_MOVIES_SIGNATURE = "next_movies"  # hist_movie_ids [B, H] -> movie_ids [B, K], log_prob [B, K]
# The user inputs and candidate *ids* only: the candidate tower's outputs were computed at export for every
# vocabulary movie of the run's batch version and are looked up in the graph (see RANK_IDS_OUTPUTS).
RANK_IDS_SIGNATURE = "rank_ids"
N_GENRES = len(GENRES)

# name: (dtype, shape with B = batch of users, N = candidates, H = history_len, T = title_len, G = genres)
SERVING_INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "user_id": ("int64", ("B",)),
    "age_bucket": ("int64", ("B",)),
    "gender": ("string", ("B",)),
    "occupation": ("string", ("B",)),
    "user_n_ratings": ("float32", ("B",)),
    "user_mean_rating": ("float32", ("B",)),
    "hist_movie_ids": ("int64", ("B", "H")),
    "hist_ratings": ("float32", ("B", "H")),
    "interest_genres": ("float32", ("B", "G")),
    "movie_ids": ("int64", ("B", "N")),
    "movie_genres": ("float32", ("B", "N", "G")),
    "movie_year": ("int64", ("B", "N")),
    "movie_title_tokens": ("string", ("B", "N", "T")),
    "movie_stats": ("float32", ("B", "N", "3")),
}
SERVING_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "score": ("float32", ("B", "N")),
    "rating": ("float32", ("B", "N")),
    "attention": ("float32", ("B", "N", "H")),
}
USER_INPUT_NAMES = ("user_id", "age_bucket", "gender", "occupation", "user_n_ratings", "user_mean_rating",
                    "hist_movie_ids", "hist_ratings", "interest_genres")
RANK_IDS_INPUTS = {name: SERVING_INPUTS[name] for name in USER_INPUT_NAMES + ("movie_ids",)}
# ``known``: the movie had a precomputed candidate vector (a vocabulary movie); a row with an unknown movie must
# be scored by serving_default, which reads the movie's features. ``batch_version``: the batch version whose
# movie statistics the precomputed vectors hold; with another version's statistics serving_default is exact.
RANK_IDS_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    **SERVING_OUTPUTS, "known": ("bool", ("B", "N")), "batch_version": ("string", ("B",))}
# One call per Recommend (exports with a sequence model): rank_ids' inputs, where movie_ids are the recall
# candidates, and rank_ids' outputs for them; beside them next_movies' K movies and *their* rank_ids outputs,
# computed in the same graph (the sequence model, the prior and the ranker's user side run once, not twice).
RECOMMEND_SIGNATURE = "recommend"
RECOMMEND_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    **RANK_IDS_OUTPUTS, "next_movie_ids": ("int64", ("B", "K")), "next_log_prob": ("float32", ("B", "K")),
    "next_score": ("float32", ("B", "K")), "next_rating": ("float32", ("B", "K")),
    "next_attention": ("float32", ("B", "K", "H"))}


@dataclass
class UserInput:
    """What the caller knows about a user at request time (unknowns stay at their defaults)."""

    user_id: int = 0
    age_bucket: int = 0
    gender: str = ""
    occupation: str = ""
    history: Sequence[tuple[int, float]] = field(default_factory=list)  # (movie_id, rating), oldest first
    interest_genres: Sequence[str] = field(default_factory=list)        # used when the history is empty
    n_ratings: float | None = None    # all ratings so far (default: len(history), which may be truncated)
    mean_rating: float | None = None  # their mean (default: the mean over ``history``)


@dataclass
class MovieInputs:
    """Candidate movies' raw features, aligned lists (from the movie cache or the warehouse)."""

    movie_ids: Sequence[int]
    genres: Sequence[Sequence[str]]
    years: Sequence[int | None]
    title_tokens: Sequence[Sequence[str]]
    popularity: Sequence[float]      # log1p(rating count)
    mean_rating: Sequence[float]
    bayes_rating: Sequence[float]


def build_request(user: UserInput, movies: MovieInputs, history_len: int, title_len: int) -> dict[str, np.ndarray]:
    """Signature inputs for one user and N candidates (B = 1)."""
    n = len(movies.movie_ids)
    stats = np.stack([np.asarray(movies.popularity, np.float64), np.asarray(movies.mean_rating, np.float64),
                      np.asarray(movies.bayes_rating, np.float64)], axis=1) if n else np.zeros((0, 3))
    return {
        **build_user_request(user, history_len),
        "movie_ids": np.asarray(movies.movie_ids, np.int64).reshape(1, n),
        "movie_genres": genre_multi_hot(list(movies.genres)).reshape(1, n, N_GENRES),
        "movie_year": np.asarray([y or 0 for y in movies.years], np.int64).reshape(1, n),
        "movie_title_tokens": pad_tokens(list(movies.title_tokens), title_len).reshape(1, n, title_len),
        "movie_stats": np.nan_to_num(stats, nan=0.0).astype(np.float32).reshape(1, n, 3),
    }


def build_user_request(user: UserInput, history_len: int) -> dict[str, np.ndarray]:
    """The user inputs (``USER_INPUT_NAMES``) for one user (B = 1): with ``movie_ids`` a ``rank_ids`` request."""
    hist = list(user.history)[-history_len:]
    ratings = [r for _, r in hist]
    return {
        "user_id": np.array([user.user_id], np.int64),
        "age_bucket": np.array([user.age_bucket or 0], np.int64),
        "gender": np.array([user.gender or ""], object),
        "occupation": np.array([user.occupation or ""], object),
        "user_n_ratings": np.array([len(user.history) if user.n_ratings is None else user.n_ratings], np.float32),
        "user_mean_rating": np.array([user.mean_rating if user.mean_rating is not None else
                                      float(np.mean([r for _, r in user.history])) if user.history else 0.0], np.float32),
        "hist_movie_ids": left_pad([[m for m, _ in hist]], history_len, np.int64),
        "hist_ratings": left_pad([ratings], history_len, np.float32),
        "interest_genres": genre_multi_hot([list(user.interest_genres)]),
    }


def concat_requests(requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack single-user requests with the same N into one batch of B users."""
    return {k: np.concatenate([r[k] for r in requests], axis=0) for k in requests[0]}


def as_tensors(request: dict[str, Any]) -> dict[str, Any]:
    """numpy request -> tf tensors of the signature's dtypes."""
    import tensorflow as tf

    out = {}
    for name, (dtype, _) in SERVING_INPUTS.items():
        value = request[name]
        out[name] = tf.constant(value.astype(str) if dtype == "string" else value,
                                dtype=tf.string if dtype == "string" else getattr(tf, dtype))
    return out

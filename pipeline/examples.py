"""Training examples of one user, point-in-time correct (pure; run per user by Spark).

Each rating event becomes one example whose history is strictly the user's earlier
ratings (at most ``history_len``, oldest first), with the user's count and mean
rating *before* the event, and ``negatives`` movies the user never rated at any
time. Held-out ``test`` events never enter any history (under P2 they are spread
through time). Nothing from the event itself or the future leaks into its inputs;
the test suite checks this row by row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EXAMPLE_COLUMNS = ("user_id", "movie_id", "rating", "ts", "split", "pos", "hist_movies", "hist_ratings",
                   "n_before", "mean_before", "negatives")
EXAMPLES_SCHEMA = ("user_id int, movie_id int, rating float, ts long, split string, pos int, "
                   "hist_movies array<int>, hist_ratings array<float>, n_before int, mean_before float, "
                   "negatives array<int>")


def sample_negatives(rng: np.random.Generator, universe: np.ndarray, probs: np.ndarray | None,
                     exclude: np.ndarray, rows: int, k: int) -> np.ndarray:
    """``rows x k`` movie ids drawn from ``universe`` minus ``exclude`` (with replacement across rows)."""
    if k == 0 or rows == 0:
        return np.zeros((rows, k), dtype=np.int32)
    allowed = ~np.isin(universe, exclude)
    pool = universe[allowed]
    if len(pool) == 0:
        raise ValueError("no movie left to sample negatives from: the user rated the whole catalogue")
    p = None
    if probs is not None:
        p = probs[allowed]
        p = p / p.sum()
    draws = rng.choice(pool, size=(rows, k), replace=True, p=p)
    return draws.astype(np.int32)


def user_examples(events: pd.DataFrame, universe: np.ndarray, probs: np.ndarray | None,
                  history_len: int, negatives: int, seed: int) -> pd.DataFrame:
    """All examples of one user; ``events`` has user_id, movie_id, rating, ts, line, split."""
    ev = events.sort_values(["ts", "line"], kind="mergesort").reset_index(drop=True)
    user_id = int(ev["user_id"].iloc[0])
    movies = ev["movie_id"].to_numpy(np.int32)
    ratings = ev["rating"].to_numpy(np.float32)
    n = len(ev)
    visible = (ev["split"] != "test").to_numpy()
    vis_movies, vis_ratings = movies[visible], ratings[visible]
    n_before = np.concatenate([[0], np.cumsum(visible)[:-1]]).astype(np.int32)  # visible events strictly before i
    csum = np.concatenate([[0.0], np.cumsum(vis_ratings, dtype=np.float64)])
    mean_before = np.where(n_before > 0, csum[n_before] / np.maximum(n_before, 1), 0.0).astype(np.float32)
    hist_movies = [vis_movies[max(0, j - history_len):j].tolist() for j in n_before]
    hist_ratings = [vis_ratings[max(0, j - history_len):j].tolist() for j in n_before]
    rng = np.random.default_rng([seed, user_id])
    negs = sample_negatives(rng, universe, probs, np.unique(movies), n, negatives)
    return pd.DataFrame({
        "user_id": np.full(n, user_id, dtype=np.int32), "movie_id": movies, "rating": ratings,
        "ts": ev["ts"].to_numpy(np.int64), "split": ev["split"].astype(str).to_numpy(),
        "pos": np.arange(n, dtype=np.int32), "hist_movies": hist_movies, "hist_ratings": hist_ratings,
        "n_before": n_before, "mean_before": mean_before, "negatives": list(negs),
    }, columns=list(EXAMPLE_COLUMNS))

"""Baselines the ranker is measured against (docs/evaluation.md "Reporting").

Each baseline scores every catalogue movie for a batch of users at once (numpy), the
same interface as the model scorer in ``model.evaluate``: ``(scores, ratings)`` of
shape ``[users, catalogue]``.

* popularity: training rating count; rating = the movie's mean rating.
* item-kNN: cosine similarity of movies over users (binary interactions), a user's
  score for a movie = sum of its similarities to the user's history (top-k neighbours
  kept per movie); rating = similarity-weighted mean of the user's ratings on those
  neighbours, falling back to the user's mean.
* matrix factorisation: the batch plane's implicit ALS factors (dot product);
  implicit ALS has no rating scale, so its rating is the regularised bias model
  (global mean + user bias + movie bias), which is what SVD-style MF reduces to
  without factors and a standard rating baseline on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Catalogue:
    """The candidate universe: recommendable movie ids and their column positions."""

    movie_ids: np.ndarray  # [M] int64

    def positions(self, movie_ids: np.ndarray) -> np.ndarray:
        pos = pd.Index(self.movie_ids).get_indexer(np.asarray(movie_ids))
        return pos


class BiasModel:
    """r(u, i) = mu + b_u + b_i, biases shrunk by ``reg`` (two alternating passes)."""

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue, reg: float = 10.0) -> None:
        self.mu = float(train["rating"].mean())
        item = pd.Series(0.0, index=catalogue.movie_ids)
        user = pd.Series(dtype=float)
        for _ in range(2):
            resid = train["rating"] - self.mu - train["user_id"].map(user).fillna(0.0)
            g = resid.groupby(train["movie_id"])
            item = (g.sum() / (g.count() + reg)).reindex(catalogue.movie_ids).fillna(0.0)
            resid = train["rating"] - self.mu - train["movie_id"].map(item).fillna(0.0)
            g = resid.groupby(train["user_id"])
            user = g.sum() / (g.count() + reg)
        self.item, self.user = item.to_numpy(), user

    def predict_pairs(self, user_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user, catalogue position) pairs; unknown movies get no movie bias."""
        bu = pd.Series(user_ids).map(self.user).fillna(0.0).to_numpy()
        bi = np.where(positions >= 0, self.item[np.maximum(positions, 0)], 0.0)
        return np.clip(self.mu + bu + bi, 0.5, 5.0)

    def predict(self, user_ids: np.ndarray) -> np.ndarray:
        bu = pd.Series(user_ids).map(self.user).fillna(0.0).to_numpy()
        return np.clip(self.mu + bu[:, None] + self.item[None, :], 0.5, 5.0)


class Popularity:
    name = "baseline:popularity"

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue) -> None:
        counts = train["movie_id"].value_counts().reindex(catalogue.movie_ids).fillna(0.0)
        means = train.groupby("movie_id")["rating"].mean().reindex(catalogue.movie_ids)
        self.scores = counts.to_numpy(np.float64)
        self.ratings = means.fillna(train["rating"].mean()).to_numpy(np.float64)

    def score(self, users: list["UserRow"]) -> tuple[np.ndarray, np.ndarray]:
        n = len(users)
        return np.tile(self.scores, (n, 1)), np.tile(self.ratings, (n, 1))


@dataclass
class UserRow:
    """What every scorer may use about a test user: visible history (train + val)."""

    user_id: int
    movies: np.ndarray   # history movie ids, oldest first
    ratings: np.ndarray


class ItemKNN:
    name = "baseline:item-knn"

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue, k: int = 50) -> None:
        self.catalogue = catalogue
        users = pd.Index(train["user_id"].unique())
        rows = users.get_indexer(train["user_id"])
        cols = catalogue.positions(train["movie_id"].to_numpy())
        keep = cols >= 0
        m = np.zeros((len(users), len(catalogue.movie_ids)), np.float32)
        m[rows[keep], cols[keep]] = 1.0
        norms = np.sqrt(m.sum(axis=0)) + 1e-9
        sim = (m.T @ m) / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        if k < sim.shape[1]:
            cut = np.partition(sim, -k, axis=1)[:, -k][:, None]
            sim = np.where(sim >= cut, sim, 0.0)
        self.sim = sim.astype(np.float32)
        self.bias = BiasModel(train, catalogue)

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        m = len(self.catalogue.movie_ids)
        h = np.zeros((len(users), m), np.float32)
        r = np.zeros((len(users), m), np.float32)
        for i, u in enumerate(users):
            pos = self.catalogue.positions(u.movies)
            ok = pos >= 0
            h[i, pos[ok]] = 1.0
            r[i, pos[ok]] = u.ratings[ok]
        scores = h @ self.sim              # sum of similarities to the history
        weight = h @ np.abs(self.sim)
        weighted = r @ self.sim
        fallback = self.bias.predict(np.array([u.user_id for u in users]))
        ratings = np.where(weight > 1e-6, weighted / np.maximum(weight, 1e-6), fallback)
        return scores, np.clip(ratings, 0.5, 5.0)


class MatrixFactorisation:
    name = "baseline:mf-als"

    def __init__(self, user_factors: pd.DataFrame, item_factors: pd.DataFrame, train: pd.DataFrame,
                 catalogue: Catalogue) -> None:
        dim = len(item_factors["features"].iloc[0])
        items = np.zeros((len(catalogue.movie_ids), dim), np.float32)
        pos = catalogue.positions(item_factors["id"].to_numpy())
        ok = pos >= 0
        items[pos[ok]] = np.stack(item_factors["features"].to_numpy())[ok]
        self.items = items
        self.users = {int(u): np.asarray(f, np.float32) for u, f in zip(user_factors["id"], user_factors["features"])}
        self.dim = dim
        self.bias = BiasModel(train, catalogue)

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        u = np.stack([self.users.get(x.user_id, np.zeros(self.dim, np.float32)) for x in users])
        return u @ self.items.T, self.bias.predict(np.array([x.user_id for x in users]))

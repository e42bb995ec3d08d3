"""Baselines the ranker is measured against (docs/evaluation.md "Reporting").

Each baseline scores every catalogue movie for a batch of users at once (numpy), the
same interface as the model scorer in ``model.evaluate``: ``(scores, ratings)`` of
shape ``[users, catalogue]``.

* popularity: training rating count; rating = the movie's mean rating.
* item-kNN: cosine similarity of movies over users (binary interactions), a user's
  score for a movie = sum of its similarities to the user's history (top-k neighbours
  kept per movie); rating = similarity-weighted mean of the user's ratings on those
  neighbours, falling back to the user's mean.
* transition, EASE and their blend: the strong simple baselines of the development sets
  (see below); biased MF fitted by SGD is the P2 rating baseline.
* matrix factorisation: the batch plane's implicit ALS factors (dot product);
  implicit ALS has no rating scale, so its rating is the regularised bias model
  (global mean + user bias + movie bias), which is what SVD-style MF reduces to
  without factors and a standard rating baseline on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.metrics import full_ranks, hr_ndcg


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


# --- the strong simple baselines of the development sets (docs: EVALUATION "Strong simple baselines") -------------
# On real MovieLens the order of a user's ratings carries much of the signal: "what people rated right after your
# last movie" and a linear item-item autoencoder (EASE) beat popularity, item-kNN and ALS, and their blend beats
# both. A ranker that cannot beat these rows is not done, so they are rows of every P1 table.

def _binary_matrix(users: list[UserRow], catalogue: Catalogue) -> np.ndarray:
    """[B, M] 0/1 rows of the users' visible histories over the catalogue."""
    h = np.zeros((len(users), len(catalogue.movie_ids)), np.float32)
    for i, u in enumerate(users):
        pos = catalogue.positions(u.movies)
        h[i, pos[pos >= 0]] = 1.0
    return h


def _last_positions(users: list[UserRow], catalogue: Catalogue) -> np.ndarray:
    """Catalogue position of each user's latest movie (-1 when unknown or no history)."""
    last = np.array([u.movies[-1] if len(u.movies) else -1 for u in users], np.int64)
    return catalogue.positions(last)


def _rows_of(frame: pd.DataFrame) -> list[UserRow]:
    """One UserRow per user of a time-ordered interactions frame (``pos`` order when present)."""
    order = ["user_id", "pos"] if "pos" in frame.columns else ["user_id"]
    g = frame.sort_values(order, kind="stable").groupby("user_id", sort=True)
    return [UserRow(int(u), x["movie_id"].to_numpy(np.int64), x["rating"].to_numpy(np.float32)) for u, x in g]


class Transition:
    """score(m) = times m was rated right after the user's latest movie; popularity breaks ties.

    ``probabilities`` (the row-normalised counts, P(next = m | last)) is what the blend adds to EASE.
    """

    name = "baseline:transition"

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        m = len(catalogue.movie_ids)
        ordered = train.sort_values(["user_id", "pos"] if "pos" in train.columns else ["user_id"], kind="stable")
        pos = catalogue.positions(ordered["movie_id"].to_numpy())
        same_user = ordered["user_id"].to_numpy()[1:] == ordered["user_id"].to_numpy()[:-1]
        a, b = pos[:-1], pos[1:]
        keep = same_user & (a >= 0) & (b >= 0)
        counts = np.zeros((m, m), np.float32)
        np.add.at(counts, (a[keep], b[keep]), 1.0)
        self.counts = counts
        pop = np.bincount(pos[pos >= 0], minlength=m).astype(np.float64)
        self.tie_break = (pop / (pop.max() + 1.0)).astype(np.float32)  # < 1: never outranks one more transition
        self.probabilities = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        self.bias = BiasModel(train, catalogue)

    def transition_scores(self, users: list[UserRow], table: np.ndarray) -> np.ndarray:
        last = _last_positions(users, self.catalogue)
        out = np.zeros((len(users), table.shape[1]), np.float32)
        ok = last >= 0
        out[ok] = table[last[ok]]
        return out

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        scores = self.transition_scores(users, self.counts) + self.tie_break[None, :]
        return scores, self.bias.predict(np.array([u.user_id for u in users]))


class EASE:
    """Steck (2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1 over the binary user x movie matrix.

    Dense in the catalogue size (M x M floats): fine for MovieLens-1M's 3,706 movies, refused above
    ``max_movies`` where a sparse or factorised model is the right tool.
    """

    name = "baseline:ease"
    max_movies = 20_000

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue, lam: float = 200.0) -> None:
        m = len(catalogue.movie_ids)
        if m > self.max_movies:
            raise ValueError(f"EASE is dense in the catalogue: {m} movies > {self.max_movies}")
        self.catalogue, self.lam = catalogue, lam
        x = _binary_matrix(_rows_of(train), catalogue).astype(np.float64)
        gram = x.T @ x
        gram[np.diag_indices(m)] += lam
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        self.weights = b.astype(np.float32)
        self.bias = BiasModel(train, catalogue)

    def item_scores(self, users: list[UserRow]) -> np.ndarray:
        return _binary_matrix(users, self.catalogue) @ self.weights

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        return self.item_scores(users), self.bias.predict(np.array([u.user_id for u in users]))


class EaseTransitionBlend:
    """EASE score + beta x P(next = m | the user's latest movie)."""

    name = "baseline:ease+transition"

    def __init__(self, ease: EASE, transition: Transition, beta: float = 10.0) -> None:
        self.ease, self.transition, self.beta = ease, transition, beta

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        s = self.ease.item_scores(users) + self.beta * self.transition.transition_scores(users, self.transition.probabilities)
        return s, self.ease.bias.predict(np.array([u.user_id for u in users]))


class ScorerLike(Protocol):
    """What every scorer here offers (``model.evaluate.Scorer``): scores and ratings over the catalogue."""

    name: str

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]: ...


def validation_hit_rate(scorer: ScorerLike, history: list[UserRow], targets: np.ndarray, catalogue: Catalogue,
                        k: int = 10, batch: int = 256) -> float:
    """Full-ranking HR@k of each user's validation movie (history masked, ties against): the tuning criterion."""
    hits = 0
    tpos = catalogue.positions(targets)
    for start in range(0, len(history), batch):
        rows = history[start:start + batch]
        s = scorer.score(rows)[0].astype(np.float64)
        s[_binary_matrix(rows, catalogue) > 0] = -np.inf
        t = tpos[start:start + batch]
        hits += int(hr_ndcg(full_ranks(s, np.maximum(t, 0)), t >= 0, k)[0].sum())
    return hits / max(len(history), 1)


@dataclass
class Tuned:
    """The sequence baselines with their hyperparameters chosen on validation, refit on train + validation
    (``on_train``: the blend with the chosen values before the refit, for scoring the validation users)."""

    transition: Transition
    ease: EASE
    blend: EaseTransitionBlend
    lam: float
    beta: float
    validation: dict[str, float]
    on_train: EaseTransitionBlend


def tune_sequence_baselines(train: pd.DataFrame, val: pd.DataFrame, catalogue: Catalogue,
                            lambdas: tuple[float, ...] = (20, 50, 100, 200, 500, 1000),
                            betas: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)) -> Tuned:
    """EVALUATION's recipe: lambda and beta on each user's validation movie (fit on train), then refit on train+val."""
    history = _rows_of(train)
    target_of = val.drop_duplicates("user_id", keep="last").set_index("user_id")["movie_id"]
    history = [u for u in history if u.user_id in target_of.index]
    targets = target_of.reindex([u.user_id for u in history]).to_numpy(np.int64)
    trans = Transition(train, catalogue)
    scores: dict[str, float] = {}

    def best_of(grid: tuple[float, ...], label: str, make: Callable[[float], ScorerLike]) -> float:
        """The grid value with the highest validation HR@10 (the first on ties); every value's score kept."""
        for value in grid:
            scores[f"{label}={value:g}"] = validation_hit_rate(make(value), history, targets, catalogue)
        return max(grid, key=lambda v: (scores[f"{label}={v:g}"], -grid.index(v)))

    best_lam = best_of(lambdas, "ease lambda", lambda lam: EASE(train, catalogue, lam))
    ease = EASE(train, catalogue, best_lam)
    best_beta = best_of(betas, "blend beta", lambda beta: EaseTransitionBlend(ease, trans, beta))
    both = pd.concat([train, val])
    t_all, e_all = Transition(both, catalogue), EASE(both, catalogue, best_lam)
    return Tuned(transition=t_all, ease=e_all, blend=EaseTransitionBlend(e_all, t_all, best_beta),
                 lam=best_lam, beta=best_beta, validation=scores,
                 on_train=EaseTransitionBlend(ease, trans, best_beta))


def _add_rows(table: np.ndarray, rows: np.ndarray, delta: np.ndarray) -> None:
    """``np.add.at(table, rows, delta)`` (repeated rows add up), by one sort and a segment sum: about three
    times faster for a mini-batch, which is most of fitting the rating prior on 1M ratings."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    table[sorted_rows[starts]] += np.add.reduceat(delta[order], starts, axis=0)


class BiasedMF:
    """Biased matrix factorisation r = mu + b_u + b_i + p_u . q_i, fitted by SGD (Funk / Koren), the P2 baseline.

    Mini-batches of shuffled ratings with per-rating learning rate and L2; epochs stop when the RMSE of a
    held-out slice of the training ratings stops improving, and the best epoch is kept.
    """

    name = "baseline:biased-mf (SGD)"

    def __init__(self, train: pd.DataFrame, factors: int = 128, lr: float = 0.01, reg: float = 0.1,
                 max_epochs: int = 60, batch: int = 256, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.users = pd.Index(np.sort(train["user_id"].unique()))
        self.items = pd.Index(np.sort(train["movie_id"].unique()))
        u = self.users.get_indexer(train["user_id"]).astype(np.int64)
        i = self.items.get_indexer(train["movie_id"]).astype(np.int64)
        r = train["rating"].to_numpy(np.float64)
        hold = rng.random(len(r)) < 0.05
        self.mu = float(r[~hold].mean())
        p = rng.normal(0, 0.1, (len(self.users), factors))
        q = rng.normal(0, 0.1, (len(self.items), factors))
        bu, bi = np.zeros(len(self.users)), np.zeros(len(self.items))
        fit = np.flatnonzero(~hold)
        best, best_state, stale = np.inf, None, 0
        for _ in range(max_epochs):
            rng.shuffle(fit)
            for s in range(0, len(fit), batch):
                j = fit[s:s + batch]
                uj, ij = u[j], i[j]
                pu, qi = p[uj], q[ij]
                e = r[j] - (self.mu + bu[uj] + bi[ij] + np.einsum("bf,bf->b", pu, qi))
                bu += np.bincount(uj, lr * (e - reg * bu[uj]), len(bu))
                bi += np.bincount(ij, lr * (e - reg * bi[ij]), len(bi))
                _add_rows(p, uj, lr * (e[:, None] * qi - reg * pu))
                _add_rows(q, ij, lr * (e[:, None] * pu - reg * qi))
            pred = self.mu + bu[u[hold]] + bi[i[hold]] + np.einsum("bf,bf->b", p[u[hold]], q[i[hold]])
            rmse = float(np.sqrt(np.mean((np.clip(pred, 0.5, 5.0) - r[hold]) ** 2)))
            if rmse < best:
                best, best_state, stale = rmse, (p.copy(), q.copy(), bu.copy(), bi.copy()), 0
            else:
                stale += 1
                if stale >= 3:
                    break
        self.p, self.q, self.bu, self.bi = best_state if best_state else (p, q, bu, bi)
        self.holdout_rmse = best

    def predict_pairs(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """Predicted ratings; unknown users or movies drop their bias and factors."""
        u = self.users.get_indexer(np.asarray(user_ids))
        i = self.items.get_indexer(np.asarray(movie_ids))
        ku, ki = u >= 0, i >= 0
        pred = np.full(len(u), self.mu)
        pred[ku] += self.bu[u[ku]]
        pred[ki] += self.bi[i[ki]]
        both = ku & ki
        pred[both] += np.einsum("bf,bf->b", self.p[u[both]], self.q[i[both]])
        return np.clip(pred, 0.5, 5.0)


def p1_split(ratings: pd.DataFrame, min_movie_ratings: int = DataConfig.min_movie_ratings,
             min_user_ratings: int = DataConfig.min_user_ratings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Protocol P1 in pandas, the same rows as the batch plane's ``spark_jobs.prepare`` (one 5-core pass, movies
    first; each user's sequence by time with file order breaking ties; last = test, second-to-last = val).

    For measuring a dataset's behaviour without Spark (``behaviour_profile``); ``ratings`` has ``user_id``,
    ``movie_id``, ``rating`` and ``ts`` in file order.
    """
    r = ratings.reset_index(drop=True)
    if "line" not in r.columns:
        r = r.assign(line=np.arange(len(r)))
    r = r[r.groupby("movie_id")["movie_id"].transform("size") >= min_movie_ratings]
    r = r[r.groupby("user_id")["user_id"].transform("size") >= max(min_user_ratings, 3)]
    r = r.sort_values(["user_id", "ts", "line"], kind="stable")
    r = r.assign(pos=r.groupby("user_id").cumcount())
    from_end = r.groupby("user_id")["pos"].transform("max") - r["pos"]
    return r[from_end >= 2], r[from_end == 1], r[from_end == 0]


def behaviour_profile(ratings: pd.DataFrame, k: int = 10, lambdas: tuple[float, ...] = (100, 200, 500)
                      ) -> dict[str, float]:
    """Full-ranking HR@k under P1 of the baselines that describe how people choose: popularity, item-kNN,
    last-item transition and EASE (lambda on each user's validation movie, then refit on train + validation).

    Why: their *ratios* say how much of the next choice is popularity, co-occurrence and order. The synthetic
    generator is calibrated so these ratios match the real development sets (docs/architecture.md, "Synthetic
    data calibration"; ``tests/test_synth.py`` checks them). The lambda grid is the part of
    ``tune_sequence_baselines``' grid the development sets and the generator choose from, so one profile of
    the 1M-rating default set stays near a minute on 2 cores.
    """
    train, val, test = p1_split(ratings)
    both = pd.concat([train, val])
    catalogue = Catalogue(np.sort(pd.concat([both, test])["movie_id"].unique()))
    tuned = tune_sequence_baselines(train, val, catalogue, lambdas=lambdas, betas=(0.0,))  # the blend is not profiled
    rows = _rows_of(both)
    targets = test.set_index("user_id")["movie_id"].reindex([u.user_id for u in rows]).fillna(-1).to_numpy(np.int64)
    scorers: dict[str, ScorerLike] = {"popularity": Popularity(train, catalogue), "item-knn": ItemKNN(train, catalogue),
                                      "transition": tuned.transition, "ease": tuned.ease}
    return {name: validation_hit_rate(s, rows, targets, catalogue, k) for name, s in scorers.items()}

"""Offline evaluation of rankers and baselines under P1 (docs/evaluation.md).

For every test user (or a seeded sample), each scorer scores the whole catalogue
once; from those scores come

* full ranking: rank of the test movie among every movie the user has not seen
  (train + val) -> HR@10, NDCG@10;
* sampled: rank among 100 seeded uniform never-rated negatives, ties counted
  against the model -> HR@10, NDCG@10, and AUC (share of negatives scored below);
* rating error: RMSE / MAE of the predicted rating of the test movie.

The model is scored through its serving signature (the exported SavedModel, or the
same graph built in memory for an ablation run), with raw inputs built by
``model.signature`` - the path the gateway uses. Cold-start slices: the same test
users with their history and id hidden (demographics and interest genres only), and
the test movie presented as an unknown movie (features only, no id or statistics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd

from model.baselines import (EASE, Catalogue, ItemKNN, MatrixFactorisation, Popularity, UserRow,
                             tune_sequence_baselines)
from model.signature import N_GENRES
from model.vocab import genre_multi_hot, left_pad, pad_tokens
from pipeline.config import Config
from pipeline.evaluate import Row
from pipeline.features import top_genres
from pipeline.home import Home, table_path
from pipeline.metrics import full_ranks, mean


class Scorer(Protocol):
    name: str

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class P1Data:
    train: pd.DataFrame
    visible: pd.DataFrame           # train + val, in time order
    test: pd.DataFrame              # one row per user
    catalogue: Catalogue
    movies: pd.DataFrame            # movie features indexed like the catalogue
    users: pd.DataFrame             # demographics by user_id
    version: str


def build_split(cfg: Config) -> str | None:
    """The split of the current batch version (None when there is none)."""
    home = Home(cfg.home)
    version = home.current_version()
    return home.read_manifest(version).get("split") if version else None


def load_p1(cfg: Config) -> P1Data:
    from pipeline.evaluate import EvaluationError

    home = Home(cfg.home)
    version = home.current_version()
    if version is None or home.read_manifest(version).get("split") != "p1":
        raise EvaluationError("model evaluation needs a leave-one-out build: run `recsys batch --split p1` first")
    inter = pd.read_parquet(table_path(home, version, "interactions")).sort_values(["user_id", "pos"])
    mf = pd.read_parquet(table_path(home, version, "movie_features"))
    mf = mf[mf["in_catalog"]].sort_values("movie_id").reset_index(drop=True)
    users = pd.read_parquet(table_path(home, version, "users")).drop_duplicates("user_id").set_index("user_id")
    return P1Data(train=inter[inter["split"] == "train"], visible=inter[inter["split"] != "test"],
                  test=inter[inter["split"] == "test"].set_index("user_id"),
                  catalogue=Catalogue(mf["movie_id"].to_numpy(np.int64)), movies=mf, users=users, version=version)


class SignatureScorer:
    """Scores through a serving signature (``fn(**tensors) -> {score, rating}``) for B users x the catalogue."""

    def __init__(self, name: str, fn: Callable[..., dict[str, Any]], data: P1Data, history_len: int, title_len: int,
                 cold_users: bool = False) -> None:
        self.name, self.fn, self.data = name, fn, data
        self.history_len, self.title_len, self.cold_users = history_len, title_len, cold_users
        mf = data.movies
        self.m_ids = mf["movie_id"].to_numpy(np.int64)
        self.m_genres = genre_multi_hot(list(mf["genres"]))
        self.m_year = mf["year"].fillna(0).to_numpy(np.int64)
        self.m_tokens = pad_tokens(list(mf["title_tokens"]), title_len).astype(str)
        self.m_stats = np.nan_to_num(mf[["popularity", "mean_rating", "bayes_rating"]].to_numpy(np.float32))
        self.genres_of = {int(m): list(g) for m, g in zip(mf["movie_id"], mf["genres"])}

    def request(self, users: list[UserRow], movie_ids: np.ndarray | None = None,
                movie_overrides: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        b = len(users)
        demo = self.data.users.reindex([u.user_id for u in users])
        hist_m = [[] if self.cold_users else list(u.movies[-self.history_len:]) for u in users]
        hist_r = [[] if self.cold_users else list(u.ratings[-self.history_len:]) for u in users]
        interest = [top_genres(_affinity(u.movies, self.genres_of)) for u in users]
        ids = self.m_ids if movie_ids is None else movie_ids
        req = {
            "user_id": np.array([0 if self.cold_users else u.user_id for u in users], np.int64),
            "age_bucket": demo["age_bucket"].fillna(0).to_numpy(np.int64),
            "gender": demo["gender"].fillna("").to_numpy(dtype=object).astype(str),
            "occupation": demo["occupation"].fillna("").to_numpy(dtype=object).astype(str),
            "user_n_ratings": np.array([0 if self.cold_users else len(u.movies) for u in users], np.float32),
            "user_mean_rating": np.array([0 if self.cold_users or not len(u.ratings) else float(np.mean(u.ratings))
                                          for u in users], np.float32),
            "hist_movie_ids": left_pad(hist_m, self.history_len, np.int64),
            "hist_ratings": left_pad(hist_r, self.history_len, np.float32),
            "interest_genres": genre_multi_hot(interest),
            "movie_ids": np.tile(ids, (b, 1)),
            "movie_genres": np.broadcast_to(self.m_genres, (b, *self.m_genres.shape)),
            "movie_year": np.tile(self.m_year, (b, 1)),
            "movie_title_tokens": np.broadcast_to(self.m_tokens, (b, *self.m_tokens.shape)),
            "movie_stats": np.broadcast_to(self.m_stats, (b, *self.m_stats.shape)),
        }
        for k, v in (movie_overrides or {}).items():
            req[k] = v
        return req

    def call(self, req: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from model.signature import as_tensors

        out = self.fn(**as_tensors({k: np.ascontiguousarray(v) for k, v in req.items()}))
        return np.asarray(out["score"]), np.asarray(out["rating"])

    def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
        return self.call(self.request(users))


def _affinity(movies: np.ndarray, genres_of: dict[int, list[str]]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for m in movies:
        for g in genres_of.get(int(m), ()):
            counts[g] = counts.get(g, 0.0) + 1.0
    return counts


def saved_model_fn(path: Path) -> Callable[..., dict[str, Any]]:
    import tensorflow as tf

    return tf.saved_model.load(str(path)).signatures["serving_default"]


def run_fn(run_dir: Path) -> Callable[..., dict[str, Any]]:
    """The serving graph of a training run, built in memory (same code as the export)."""
    import tempfile

    from model.export import _write_vocab_files, build_module, load_neighbours, load_sequence
    from model.runs import load_run

    ranker, vocab, table, _ = load_run(run_dir)
    files = _write_vocab_files(vocab, Path(tempfile.mkdtemp(prefix="recsys-vocab-")))
    module = build_module(ranker, vocab, table, files, *(load_sequence(run_dir) or (None, 0.0)),
                          neighbours=load_neighbours(run_dir))

    def serve(**inputs: Any) -> dict[str, Any]:  # holds the module: its tf.function keeps only a weak reference
        return module.serve(**inputs)

    return serve


def sample_negatives(data: P1Data, user_ids: list[int], n: int, seed: int) -> dict[int, np.ndarray]:
    """docs/evaluation.md's sampled protocol: ``n`` seeded uniform movies each user never rated."""
    rated = pd.concat([data.visible[["user_id", "movie_id"]], data.test.reset_index()[["user_id", "movie_id"]]])
    rated = rated.groupby("user_id")["movie_id"].apply(lambda s: set(s.tolist()))
    out = {}
    for u in user_ids:
        rng = np.random.default_rng([seed, u])
        pool = np.setdiff1d(data.catalogue.movie_ids, np.fromiter(rated[u], np.int64), assume_unique=False)
        out[u] = rng.choice(pool, size=min(n, len(pool)), replace=False)
    return out


def sample_users(data: P1Data, max_users: int | None, seed: int = 0) -> list[int]:
    """The evaluated test users: all, or a seeded sample (the same sample for every scorer and the gateway)."""
    test_users = sorted(int(u) for u in data.test.index)
    if max_users and max_users < len(test_users):
        rng = np.random.default_rng(seed)
        test_users = sorted(rng.choice(test_users, size=max_users, replace=False).tolist())
    return test_users


def evaluate_scorers(data: P1Data, scorers: list[Scorer], max_users: int | None = None, k: int = 10,
                     n_negatives: int = 100, seed: int = 0, batch_users: int = 8,
                     on_progress: Callable[[str, int, int], None] | None = None) -> list[Row]:
    test_users = sample_users(data, max_users, seed)
    vis = data.visible.groupby("user_id")
    rows_by_user = {u: UserRow(u, g["movie_id"].to_numpy(np.int64), g["rating"].to_numpy(np.float32))
                    for u, g in vis if u in set(test_users)}
    negatives = sample_negatives(data, test_users, n_negatives, seed)
    pos_of = data.catalogue.positions
    out: list[Row] = []
    for scorer in scorers:
        t0 = time.perf_counter()
        m: dict[str, list[float]] = {k_: [] for k_ in ("hr", "ndcg", "shr", "sndcg", "auc", "err")}
        for start in range(0, len(test_users), batch_users):
            batch = [rows_by_user[u] for u in test_users[start:start + batch_users]]
            scores, ratings = scorer.score(batch)
            for i, u in enumerate(batch):
                target = int(data.test.loc[u.user_id, "movie_id"])
                tpos = int(pos_of(np.array([target]))[0])
                s = scores[i].astype(np.float64).copy()
                seen = pos_of(u.movies)
                s[seen[seen >= 0]] = -np.inf
                full_rank = int(full_ranks(s[None, :], np.array([tpos]))[0])  # ties against, as when sampled
                neg = s[pos_of(negatives[u.user_id])]
                sampled_rank = 1 + int(np.sum(neg >= s[tpos]))
                m["hr"].append(float(full_rank <= k))
                m["ndcg"].append(1 / np.log2(full_rank + 1) if full_rank <= k else 0.0)
                m["shr"].append(float(sampled_rank <= k))
                m["sndcg"].append(1 / np.log2(sampled_rank + 1) if sampled_rank <= k else 0.0)
                m["auc"].append(float(np.mean(neg < s[tpos])))
                m["err"].append(float(ratings[i, tpos]) - float(data.test.loc[u.user_id, "rating"]))
            if on_progress:
                on_progress(scorer.name, min(start + batch_users, len(test_users)), len(test_users))
        err = np.asarray(m["err"])
        out.append(Row(model=scorer.name, protocol="P1", seconds=round(time.perf_counter() - t0, 1), metrics={
            f"HR@{k}": round(mean(m["hr"]), 4), f"NDCG@{k}": round(mean(m["ndcg"]), 4),
            f"HR@{k} sampled": round(mean(m["shr"]), 4), f"NDCG@{k} sampled": round(mean(m["sndcg"]), 4),
            "AUC": round(mean(m["auc"]), 4), "RMSE": round(float(np.sqrt(np.mean(err ** 2))), 4),
            "MAE": round(float(np.mean(np.abs(err))), 4)}))
    return out


def cold_movie_row(scorer: SignatureScorer, data: P1Data, test_users: list[int], k: int = 10,
                   n_negatives: int = 100, seed: int = 0) -> Row:
    """Sampled protocol with the test movie shown as a brand-new movie (no id, no statistics)."""
    t0 = time.perf_counter()
    negatives = sample_negatives(data, test_users, n_negatives, seed)
    vis = data.visible.groupby("user_id")
    hr, ndcg = [], []
    for u in test_users:
        g = vis.get_group(u)
        row = UserRow(u, g["movie_id"].to_numpy(np.int64), g["rating"].to_numpy(np.float32))
        target = int(data.test.loc[u, "movie_id"])
        ids = np.concatenate([[target], negatives[u]])
        pos = data.catalogue.positions(ids)
        req = scorer.request([row], movie_ids=ids.copy())
        req["movie_ids"][0, 0] = -1                           # unknown id -> cold-start embedding
        req["movie_genres"] = scorer.m_genres[pos][None]
        req["movie_year"] = scorer.m_year[pos][None]
        req["movie_title_tokens"] = scorer.m_tokens[pos][None]
        stats = scorer.m_stats[pos].copy()
        stats[0] = 0.0                                       # a new movie has no ratings yet
        req["movie_stats"] = stats[None]
        s, _ = scorer.call(req)
        rank = 1 + int(np.sum(s[0, 1:] >= s[0, 0]))
        hr.append(float(rank <= k))
        ndcg.append(1 / np.log2(rank + 1) if rank <= k else 0.0)
    return Row(model=f"{scorer.name} [cold movie]", protocol="P1 sampled", seconds=round(time.perf_counter() - t0, 1),
               metrics={f"HR@{k} sampled": round(mean(hr), 4), f"NDCG@{k} sampled": round(mean(ndcg), 4)},
               notes="test movie scored from genres, year and title only")


def baselines(data: P1Data, home: Home) -> list[Scorer]:
    """Every baseline row of the P1 table.

    Popularity, item-kNN and ALS come from the training ratings, as the batch plane fits them; transition, EASE
    and their blend follow the development sets' recipe (hyperparameters on each user's validation movie, then
    refit on train + validation, the history the test is asked from).
    """
    uf = pd.read_parquet(table_path(home, data.version, "als_user_factors"))
    itf = pd.read_parquet(table_path(home, data.version, "als_item_factors"))
    out: list[Scorer] = [Popularity(data.train, data.catalogue), ItemKNN(data.train, data.catalogue),
                         MatrixFactorisation(uf, itf, data.train, data.catalogue)]
    if len(data.catalogue.movie_ids) <= EASE.max_movies:
        val = data.visible[data.visible["split"] == "val"]
        tuned = tune_sequence_baselines(data.train, val, data.catalogue)
        tuned.ease.name = f"baseline:ease (lambda {tuned.lam:g})"
        tuned.blend.name = f"baseline:ease+transition (beta {tuned.beta:g})"
        out += [tuned.transition, tuned.ease, tuned.blend]
    return out


def p2_requests(rows: pd.DataFrame, users: pd.DataFrame, movies: pd.DataFrame, history_len: int,
                title_len: int) -> dict[str, np.ndarray]:
    """Signature inputs for B examples with one candidate each (the example's own movie and context)."""
    b = len(rows)
    demo = users.reindex(rows["user_id"].to_numpy())
    mf = movies.reindex(rows["movie_id"].to_numpy())
    stats = np.nan_to_num(mf[["popularity", "mean_rating", "bayes_rating"]].to_numpy(np.float32))
    return {
        "user_id": rows["user_id"].to_numpy(np.int64),
        "age_bucket": demo["age_bucket"].fillna(0).to_numpy(np.int64),
        "gender": demo["gender"].fillna("").to_numpy(dtype=object).astype(str),
        "occupation": demo["occupation"].fillna("").to_numpy(dtype=object).astype(str),
        "user_n_ratings": rows["n_before"].to_numpy(np.float32),
        "user_mean_rating": rows["mean_before"].to_numpy(np.float32),
        "hist_movie_ids": left_pad(list(rows["hist_movies"]), history_len, np.int64),
        "hist_ratings": left_pad(list(rows["hist_ratings"]), history_len, np.float32),
        "interest_genres": np.zeros((b, N_GENRES), np.float32),
        "movie_ids": rows["movie_id"].to_numpy(np.int64)[:, None],
        "movie_genres": genre_multi_hot([g if isinstance(g, (list, np.ndarray)) else [] for g in mf["genres"]])[:, None, :],
        "movie_year": mf["year"].fillna(0).to_numpy(np.int64)[:, None],
        "movie_title_tokens": pad_tokens([t if isinstance(t, (list, np.ndarray)) else [] for t in mf["title_tokens"]],
                                         title_len).astype(str)[:, None, :],
        "movie_stats": stats[:, None, :],
    }


def evaluate_p2(cfg: Config, runs: list[str], max_rows: int | None = None, batch: int = 1024) -> Any:
    """P2: RMSE / MAE of predicted ratings on the held-out random 10%, with a bias baseline."""
    from model.baselines import BiasedMF, BiasModel
    from model.export import exported_versions, model_base
    from model.signature import as_tensors
    from model.runs import runs_dir
    from pipeline.evaluate import Report

    home = Home(cfg.home)
    version = home.current_version()
    inter = pd.read_parquet(table_path(home, version, "interactions"))
    test = pd.read_parquet(table_path(home, version, "examples"), filters=[("split", "==", "test")])
    if max_rows and max_rows < len(test):
        test = test.sample(n=max_rows, random_state=0)
    movies = pd.read_parquet(table_path(home, version, "movie_features")).set_index("movie_id")
    users = pd.read_parquet(table_path(home, version, "users")).drop_duplicates("user_id").set_index("user_id")
    truth = test["rating"].to_numpy(np.float64)
    fns: list[tuple[str, Any]] = []
    versions = exported_versions(home)
    if versions:
        fns.append((f"ranker (export v{versions[0]})", saved_model_fn(model_base(home) / str(versions[0]))))
    fns += [(f"run {r}", run_fn(runs_dir(home) / r)) for r in runs]
    rows: list[Row] = []
    for name, fn in fns:
        t0 = time.perf_counter()
        preds = []
        for start in range(0, len(test), batch):
            req = p2_requests(test.iloc[start:start + batch], users, movies, cfg.samples.history_len,
                              cfg.features.title_max_tokens)
            preds.append(np.asarray(fn(**as_tensors(req))["rating"])[:, 0])
        err = np.concatenate(preds) - truth
        rows.append(Row(model=name, protocol="P2", seconds=round(time.perf_counter() - t0, 1),
                        metrics={"RMSE": round(float(np.sqrt(np.mean(err ** 2))), 4), "MAE": round(float(np.mean(np.abs(err))), 4)}))
    t0 = time.perf_counter()
    train = inter[inter["split"] == "train"]
    cat = Catalogue(np.sort(inter["movie_id"].unique()))
    bias = BiasModel(train, cat)
    pred = bias.predict_pairs(test["user_id"].to_numpy(), cat.positions(test["movie_id"].to_numpy()))
    err = pred - truth
    rows.append(Row(model="baseline:bias (global + user + movie)", protocol="P2", seconds=round(time.perf_counter() - t0, 1),
                    metrics={"RMSE": round(float(np.sqrt(np.mean(err ** 2))), 4), "MAE": round(float(np.mean(np.abs(err))), 4)}))
    t0 = time.perf_counter()
    mf = BiasedMF(train)
    err = mf.predict_pairs(test["user_id"].to_numpy(), test["movie_id"].to_numpy()) - truth
    rows.append(Row(model=mf.name, protocol="P2", seconds=round(time.perf_counter() - t0, 1),
                    metrics={"RMSE": round(float(np.sqrt(np.mean(err ** 2))), 4), "MAE": round(float(np.mean(np.abs(err))), 4)},
                    notes="128 factors, lr 0.01, reg 0.1, epochs by a held-out 5% of train"))
    return Report(rows=rows, info={"batch_version": version, "users": int(test["user_id"].nunique()),
                                   "test_ratings": int(len(test)), "protocol": "P2"})

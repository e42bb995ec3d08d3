"""The neighbour prior: EASE + last-movie transition, computed from the request's history inside the model.

Why it exists: on both development sets the strongest simple baseline (EASE's item-item weights plus beta x
"what people rated right after your last movie") knows something the next-movie model does not, and the two
together beat either: added to the model's score with a weight chosen on validation, full HR@10 rose 18-23 %
over the blend on ml-latest-small and ML-100K. It needs no new serving input: everything it uses is the
history the signature already receives, so the exported graph computes it (``model.export``) and real TF
Serving serves it.

What it is, for one user with history ``h`` (the signature's left-padded ``H`` latest movies)::

    s(m) = sum over movies j in h of EASE[j, m]  +  beta * P(next = m | last movie of h)
    z(m) = (s(m) - mean over prior movies of s) / std over prior movies of s     (0 outside the prior)

over the ``P`` most-rated movies of the vocabulary (``model.neighbour_max_movies``; EASE is dense in P), with
only each movie's ``K`` likeliest successors kept (``model.neighbour_successors``). Standardising per user puts
``z`` on one scale across users and datasets, so one weight (``model.neighbour_weight``) mixes it into the
score's logit (``model.sequence.mixed_logit``). :meth:`NeighbourPrior.z` is the definition; the exported graph
computes the same numbers (``tests/test_model_export.py`` checks them against it).

Fitted with the baselines' own recipe (``model.baselines.tune_sequence_baselines``: lambda and beta on each
user's validation movie): the prior fitted on the training split scores the validation users when the weight
is chosen; the one refitted on train + validation is exported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FILE = "neighbours.npz"


@dataclass
class NeighbourPrior:
    """The prior's tables, laid out for a gather-only computation (slot ``P`` is "no prior movie")."""

    slot_of: np.ndarray    # [V + 1] int32: vocabulary index -> prior slot (P when outside the prior; idx 0 -> P)
    ease: np.ndarray       # [P + 1, P + 1] float32: EASE weights between prior movies; row and column P zero
    succ_idx: np.ndarray   # [P + 1, K] int32: each prior movie's K likeliest successors (slots)
    succ_p: np.ndarray     # [P + 1, K] float32: their transition probabilities (row P zero)
    beta: float
    lam: float

    @property
    def size(self) -> int:
        """P: movies the prior covers."""
        return int(self.ease.shape[0] - 1)

    @classmethod
    def from_blend(cls, blend: Any, movie_idx: np.ndarray, vocab_size: int, successors: int) -> "NeighbourPrior":
        """Tables of a fitted ``EaseTransitionBlend`` whose catalogue's movies have vocabulary indices
        ``movie_idx`` (all > 0), keeping each movie's ``successors`` likeliest next movies."""
        p = len(movie_idx)
        slot_of = np.full(vocab_size + 1, p, np.int32)
        slot_of[np.asarray(movie_idx, np.int64)] = np.arange(p, dtype=np.int32)
        ease = np.zeros((p + 1, p + 1), np.float32)
        ease[:p, :p] = blend.ease.weights
        probs = np.asarray(blend.transition.probabilities, np.float32)
        k = max(1, min(successors, p))
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < p else np.tile(np.arange(p), (p, 1))
        top_p = np.take_along_axis(probs, top, axis=1)
        succ_idx = np.full((p + 1, k), p, np.int32)
        succ_p = np.zeros((p + 1, k), np.float32)
        succ_idx[:p] = np.where(top_p > 0, top, p)
        succ_p[:p] = np.where(top_p > 0, top_p, 0.0)
        return cls(slot_of, ease, succ_idx, succ_p, float(blend.beta), float(blend.ease.lam))

    def z(self, hist_idx: np.ndarray, chunk: int = 64) -> np.ndarray:
        """[B, V + 1] float32: the standardised prior of every vocabulary movie after each left-padded history
        ``hist_idx`` [B, H] (vocabulary indices, 0 = padding; the latest movie at column H - 1)."""
        hist_idx = np.asarray(hist_idx, np.int64)
        out = np.zeros((len(hist_idx), len(self.slot_of)), np.float32)
        p = self.size
        for start in range(0, len(hist_idx), chunk):
            slots = self.slot_of[hist_idx[start:start + chunk]]
            s = self.ease[slots].sum(axis=1, dtype=np.float64)                     # [b, P + 1]
            last = slots[:, -1]
            rows = np.arange(len(slots))[:, None]
            s[rows, self.succ_idx[last]] += self.beta * self.succ_p[last]          # successors are distinct per row
            body = s[:, :p]
            mean = body.mean(axis=1, keepdims=True)
            std = body.std(axis=1, keepdims=True)
            zs = np.zeros_like(s)
            zs[:, :p] = (body - mean) / (std + 1e-6)
            out[start:start + chunk] = zs[:, self.slot_of]
        return out

    def successors(self, idx: np.ndarray) -> np.ndarray:
        """[..., K] vocabulary indices of each movie's likeliest successors (0 where it has fewer or none)."""
        vocab_of_slot = np.zeros(self.size + 1, np.int32)
        inside = self.slot_of < self.size
        vocab_of_slot[self.slot_of[inside]] = np.flatnonzero(inside)
        return vocab_of_slot[self.succ_idx[self.slot_of[np.asarray(idx, np.int64)]]]

    def save(self, path: Path) -> None:
        """Written under a temp name, then renamed (a reader never sees half a file)."""
        import os

        tmp = path.with_name(".tmp-" + path.name)
        with open(tmp, "wb") as f:
            np.savez(f, slot_of=self.slot_of, ease=self.ease, succ_idx=self.succ_idx, succ_p=self.succ_p,
                     beta=np.float64(self.beta), lam=np.float64(self.lam))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "NeighbourPrior":
        with np.load(path) as f:
            return cls(f["slot_of"], f["ease"], f["succ_idx"], f["succ_p"], float(f["beta"]), float(f["lam"]))


@dataclass
class FittedPrior:
    """The prior fitted on train (scores validation when the weight is chosen) and on train + validation
    (exported), with the validation table of its own hyperparameters."""

    on_train: NeighbourPrior
    exported: NeighbourPrior
    validation: dict[str, float]
    seconds: float

    def info(self) -> dict[str, Any]:
        return {"movies": self.exported.size, "successors": int(self.exported.succ_idx.shape[1]),
                "lambda": self.exported.lam, "beta": self.exported.beta, "seconds": round(self.seconds, 1),
                "validation_hr@10": {k: round(v, 4) for k, v in self.validation.items()}}


def prior_movies(train: pd.DataFrame, movie_encoder: Any, max_movies: int) -> np.ndarray:
    """Movie ids of the prior: the ``max_movies`` most-rated training movies that the vocabulary knows
    (ties by id, so the choice is deterministic)."""
    counts = train["movie_id"].value_counts()
    counts = counts[movie_encoder.encode(counts.index.to_numpy()) > 0]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_movies]
    return np.sort(np.array([m for m, _ in ranked], np.int64))


def fit(inter: pd.DataFrame, movie_encoder: Any, max_movies: int, successors: int) -> FittedPrior:
    """Tune and fit the prior on a version's interactions (``split`` train / val; test never read)."""
    from model.baselines import Catalogue, tune_sequence_baselines

    t0 = time.perf_counter()
    train, val = inter[inter["split"] == "train"], inter[inter["split"] == "val"]
    movies = prior_movies(train, movie_encoder, max_movies)
    # the full frames, not only the prior's movies: a movie outside the prior breaks a transition chain, as
    # it does at serving, where the latest history movie may have no slot
    tuned = tune_sequence_baselines(train, val, Catalogue(movies))
    idx = movie_encoder.encode(movies)
    size = movie_encoder.size
    on_train = NeighbourPrior.from_blend(tuned.on_train, idx, size, successors)
    exported = NeighbourPrior.from_blend(tuned.blend, idx, size, successors)
    return FittedPrior(on_train, exported, tuned.validation, time.perf_counter() - t0)


def hard_negatives(prior: NeighbourPrior, last_idx: np.ndarray, user_ids: np.ndarray, fallback: np.ndarray,
                   rated: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[n, k] vocabulary indices of hard negatives, one row per training example: movies that followed the
    example's latest history movie (``last_idx``; what recall's next-movie and co-occurrence channels propose at
    that moment). Each of the k draws picks one of the movie's K successor slots uniformly (with
    replacement); a draw that lands on an empty slot (a movie with fewer than K successors) or on a movie the
    user rated (``rated``: int64 keys ``user_id * 2**32 + movie index``) takes the example's own uniform
    negative instead (``fallback`` [n, F], at least one column), so a movie with few successors yields fewer
    hard negatives. This is the sampler the development-set numbers were measured with. Drawing k distinct
    movies among the real successors only was tried on ML-100K: validation NDCG@10 0.143 vs 0.139, P1 test
    0.2248 / 0.1255 vs 0.2365 / 0.1280 HR@10 / NDCG@10, both differences within one standard error, so the
    simpler sampler stays.

    Why: negatives drawn uniformly from the catalogue teach the ranker "plausible vs random", but at serving it
    orders the plausible candidates recall hands it; negatives from the same neighbourhood teach that order.
    """
    if not fallback.shape[1]:
        raise ValueError("hard negatives need at least one uniform negative per example to fall back on")
    rng = np.random.default_rng(seed)
    n = len(last_idx)
    pool = prior.successors(last_idx)                                         # [n, K]
    pick = pool[np.arange(n)[:, None], rng.integers(0, pool.shape[1], size=(n, k))]
    keys = np.asarray(user_ids, np.int64)[:, None] * (1 << 32) + pick
    bad = (pick == 0) | np.isin(keys, np.asarray(rated, np.int64))
    pick = np.where(bad, fallback[np.arange(n)[:, None], np.arange(k)[None, :] % fallback.shape[1]], pick)
    return pick.astype(np.int32)


def load(run_dir: Path) -> NeighbourPrior | None:
    """A run's exported prior, or None for a run without one (weight 0 or trained before it existed)."""
    path = Path(run_dir) / FILE
    return NeighbourPrior.load(path) if path.exists() else None

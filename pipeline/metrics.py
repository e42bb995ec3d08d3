"""Ranking metrics of docs/evaluation.md (one held-out item per user)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def rank_of(target: int, ranked: Sequence[int]) -> int | None:
    """1-based rank of ``target`` in ``ranked``, None when absent."""
    for i, item in enumerate(ranked):
        if item == target:
            return i + 1
    return None


def hit_at_k(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def ndcg_at_k(rank: int | None, k: int) -> float:
    """1 / log2(rank + 1) for a hit within k, else 0 (single relevant item)."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def full_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target column among that row's scores, ties counted against the target.

    The one ranking rule of every full-ranking metric here (the evaluator, the baselines' tuning, the
    next-movie model's early stopping): masked entries (history, padding) are ``-inf`` before the call, so
    they rank below everything; a target that is itself masked gets the rank of the whole row.
    """
    s = np.asarray(scores, np.float64)
    t = s[np.arange(len(s)), np.asarray(targets, np.int64)]
    return (s >= t[:, None]).sum(axis=1)


def hr_ndcg(ranks: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row HR@k and NDCG@k from ``full_ranks`` (rows where ``valid`` is False count as misses)."""
    hits = np.asarray(valid, bool) & (ranks <= k)
    return hits.astype(np.float64), np.where(hits, 1.0 / np.log2(ranks + 1.0), 0.0)

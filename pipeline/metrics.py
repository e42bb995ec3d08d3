"""Ranking metrics of docs/evaluation.md (one held-out item per user)."""

from __future__ import annotations

import math
from typing import Sequence


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

"""From ranked candidates to the list a user sees: blend, genre cap, reasons.

Pure functions over plain values, so they are tested without servers and reused by
any front end. The order of operations is the gateway's: the model's score (plus an
optional share of the recall score) orders the candidates, the genre cap keeps one
genre from filling the list, and every kept item gets one human reason, taken from
the strongest evidence available: the history movie the model attended to most, then
the recall channel that proposed it.

Example::

    order = blend(recall_scores, model_scores, recall_weight=0.1)
    top = cap_genres(order, genres_of, k=10, cap=0.5)
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.schemas import AGE_BUCKETS
from pipeline.recall import MODEL_CHANNEL

ITEM_TO_ITEM = ("sequential", "item_similar", MODEL_CHANNEL)


def blend(recall_scores: Sequence[float], model_scores: Sequence[float] | None, recall_weight: float) -> list[int]:
    """Candidate positions, best first: model score + ``recall_weight`` x recall score scaled to [0, 1].

    Without model scores (degraded) the recall order stands. Ties keep the recall order.
    """
    recall = np.asarray(recall_scores, np.float64)
    top = (float(recall.max()) if len(recall) else 0.0) or 1.0
    if model_scores is None:
        final = recall / top
    else:
        final = np.asarray(model_scores, np.float64) + recall_weight * recall / top
    return np.lexsort((np.arange(len(final)), -final)).tolist()  # numpy: ~460 candidates per Recommend


def cap_genres(order: Sequence[int], genres_of: Callable[[int], Sequence[str]], k: int, cap: float) -> list[int]:
    """The first ``k`` of ``order`` such that no genre appears in more than ``ceil(cap * k)`` of them.

    Items that would break the cap are held back and used, in order, only when the
    list cannot otherwise be filled: the cap never shortens a list.
    """
    limit = max(1, math.ceil(cap * k))
    counts: dict[str, int] = {}
    kept: list[int] = []
    held: list[int] = []
    for item in order:
        if len(kept) >= k:
            break
        genres = genres_of(item)
        if any(counts.get(g, 0) >= limit for g in genres):
            held.append(item)
            continue
        kept.append(item)
        for g in genres:
            counts[g] = counts.get(g, 0) + 1
    kept.extend(held[: k - len(kept)])
    return kept


def audience(age_bucket: int | None, gender: str | None) -> str:
    """'women 25-34', 'men', '18-24' ... for demographic reasons."""
    who = {"F": "women", "M": "men"}.get(gender or "", "")
    age = AGE_BUCKETS.get(int(age_bucket)) if age_bucket else None
    if who and age:
        return f"{who} {age}" if age != "Under 18" else f"{who} under 18"
    return who or (f"viewers {age}" if age else "viewers like you")


def reason(sources: Sequence[str], movie_genres: Sequence[str], *, watched_title: str | None,
           user_genres: Sequence[str], age_bucket: int | None, gender: str | None) -> str:
    """One sentence saying why a movie is on the list.

    ``watched_title`` is the history movie the model's target attention weighted most
    for this candidate (None when the model did not answer or the user has no history).
    """
    if watched_title and (set(sources) & set(ITEM_TO_ITEM) or "als" in sources):
        return f"because you watched {watched_title}"
    if "sequential" in sources or MODEL_CHANNEL in sources:
        return "often watched right after movies you watched recently"
    if "item_similar" in sources:
        return "similar to movies you watched recently"
    if "als" in sources:
        return "liked by people with tastes like yours"
    if "trending" in sources:
        return "trending now"
    genre = next((g for g in movie_genres if g in user_genres), movie_genres[0] if movie_genres else None)
    if "genre_popular" in sources and genre:
        return f"popular in {genre}"
    if "demographic_popular" in sources:
        return f"popular among {audience(age_bucket, gender)}"
    if "toprated" in sources:
        return f"top rated in {genre}" if genre else "top rated"
    if watched_title:
        return f"because you watched {watched_title}"
    return "popular with everyone"


def distinctive_history(attention: "np.ndarray", rows: Sequence[int], history: Sequence[int]) -> dict[int, int | None]:
    """For each candidate row, the history movie its target attention singles out.

    Attention often rests on the same one or two history movies for every candidate,
    so "the largest weight" would give every item the same reason. Among the history
    movies holding a real share of this candidate's attention (at least a quarter of
    its largest weight), the one it attends to most *relative to the other candidates*
    (weight / that slot's mean weight) is named. ``attention`` is [N, H], left-padded
    like the history (oldest first).
    """
    import numpy as np

    h = attention.shape[1]
    tail = list(history)[-h:]
    if not tail:
        return {r: None for r in rows}
    a = np.asarray(attention, np.float64)[:, h - len(tail):]
    mean = a.mean(axis=0) + 1e-12
    out: dict[int, int | None] = {}
    for r in rows:
        top = a[r].max()
        if top <= 0:
            out[r] = None
            continue
        lift = np.where(a[r] >= top / 4, a[r] / mean, -1.0)
        out[r] = int(tail[int(np.argmax(lift))])
    return out


def reasons_for(items: Sequence[int], sources: Mapping[int, Sequence[str]], genres_of: Callable[[int], Sequence[str]],
                titles: Callable[[int], str], watched: Mapping[int, int | None], user_genres: Sequence[str],
                age_bucket: int | None, gender: str | None) -> dict[int, str]:
    """Reasons for a whole list (``watched``: candidate -> attended history movie)."""
    out = {}
    for m in items:
        w = watched.get(m)
        out[m] = reason(sources.get(m, ()), genres_of(m), watched_title=titles(w) if w else None,
                        user_genres=user_genres, age_bucket=age_bucket, gender=gender)
    return out

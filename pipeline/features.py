"""Feature definitions shared by the batch job, the stream job and the gateway.

Pure functions and one small state class, no I/O. The batch plane computes a user's
features by *folding* ``UserState.update`` over the user's events in time order; the
stream job applies the same ``update`` to each live event. Online and offline values
therefore agree by construction (the parity test checks it), decayed values included:
decay is always measured from the user's own latest event, never from "now", so a
replay gives the same numbers whenever it runs.

Example::

    state = UserState.empty(history_len=50)
    for movie_id, rating, ts in events:
        state.update(movie_id, rating, ts, genres_of(movie_id), half_life_days=30)
    state.to_features()["genre_affinity"]["Drama"]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from pipeline.schemas import GENRES

SECONDS_PER_DAY = 86_400.0
_TOKEN_RE = re.compile(r"[^\W_]+")  # Unicode letters and digits: "Misérables" stays one token
_YEAR_SUFFIX_RE = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ARTICLE_SUFFIX_RE = re.compile(r",\s*(the|a|an|les|la|le|il|el|der|die|das|l')$", re.IGNORECASE)


def decade(year: int | None) -> int | None:
    """1995 -> 1990; None stays None (unknown year is its own bucket downstream)."""
    return None if year is None else (int(year) // 10) * 10


def title_tokens(title: str, max_tokens: int = 8) -> list[str]:
    """Lower-case word tokens of a title, without the year and the MovieLens trailing article.

    'Shawshank Redemption, The (1994)' -> ['the', 'shawshank', 'redemption'].
    """
    base = _YEAR_SUFFIX_RE.sub("", title).strip()
    match = _ARTICLE_SUFFIX_RE.search(base)
    if match:
        base = f"{match.group(1)} {base[:match.start()]}"
    return _TOKEN_RE.findall(base.lower())[:max_tokens]


def decay_factor(dt_seconds: float, half_life_days: float) -> float:
    """Weight left after ``dt_seconds`` with the given half-life (1.0 when dt <= 0)."""
    if dt_seconds <= 0:
        return 1.0
    return 0.5 ** (dt_seconds / (half_life_days * SECONDS_PER_DAY))


@dataclass
class UserState:
    """Running state of one user's features; JSON-friendly so Flink state and Redis can hold it."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # Welford's sum of squared deviations
    first_ts: int | None = None
    last_ts: int | None = None
    genre_weight: list[float] = field(default_factory=lambda: [0.0] * len(GENRES))
    history: list[tuple[int, float, int]] = field(default_factory=list)
    history_len: int = 50

    @classmethod
    def empty(cls, history_len: int = 50) -> "UserState":
        return cls(history_len=history_len)

    def update(self, movie_id: int, rating: float, ts: int, genres: Iterable[str], half_life_days: float) -> None:
        """Apply one rating event (events must arrive in time order per user)."""
        self.count += 1
        delta = rating - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (rating - self.mean)
        if self.last_ts is not None:
            factor = decay_factor(ts - self.last_ts, half_life_days)
            if factor != 1.0:
                self.genre_weight = [w * factor for w in self.genre_weight]
        genre_list = [g for g in genres if g in _GENRE_POS]
        if genre_list:
            share = 1.0 / len(genre_list)
            for g in genre_list:
                self.genre_weight[_GENRE_POS[g]] += share
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.history.append((int(movie_id), float(rating), int(ts)))
        if len(self.history) > self.history_len:
            del self.history[: len(self.history) - self.history_len]

    def to_features(self) -> dict[str, Any]:
        """The published user features (the field names of the Redis user hash)."""
        total = sum(self.genre_weight)
        affinity = {g: round(w / total, 6) for g, w in zip(GENRES, self.genre_weight) if w > 0} if total > 0 else {}
        return {
            "n_ratings": self.count,
            "mean_rating": round(self.mean, 6),
            "std_rating": round(math.sqrt(self.m2 / self.count), 6) if self.count else 0.0,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "genre_affinity": affinity,
            "top_genres": top_genres(affinity),
        }


_GENRE_POS = {g: i for i, g in enumerate(GENRES)}


def top_genres(affinity: dict[str, float], n: int = 3) -> list[str]:
    """The user's strongest genres, ties broken by the canonical genre order."""
    return [g for g, _ in sorted(affinity.items(), key=lambda kv: (-kv[1], _GENRE_POS.get(kv[0], 99)))[:n]]


def fold_user(events: Iterable[tuple[int, float, int]], genres_of: dict[int, Sequence[str]],
              half_life_days: float, history_len: int) -> UserState:
    """Batch path: the state after all of a user's events (already in time order)."""
    state = UserState.empty(history_len)
    for movie_id, rating, ts in events:
        state.update(movie_id, rating, ts, genres_of.get(int(movie_id), ()), half_life_days)
    return state


def bayes_mean(mean: float, count: int, prior_mean: float, prior_count: float) -> float:
    """Mean rating shrunk towards the global mean: ranks 'top rated' without 1-vote movies on top."""
    return (mean * count + prior_mean * prior_count) / (count + prior_count)

"""Shared feature functions: exact values on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.features import (UserState, bayes_mean, decade, decay_factor, fold_user, title_tokens,
                                top_genres)

DAY = 86_400


@pytest.mark.parametrize("title, tokens", [
    ("Shawshank Redemption, The (1994)", ["the", "shawshank", "redemption"]),
    ("Misérables, Les (1995)", ["les", "misérables"]),
    ("Babylon 5 (1994-1998)", ["babylon", "5"]),
    ("Black Mirror", ["black", "mirror"]),
    ("Star Wars: Episode IV - A New Hope (1977)", ["star", "wars", "episode", "iv", "a", "new", "hope"]),
])
def test_title_tokens(title: str, tokens: list[str]) -> None:
    assert title_tokens(title, max_tokens=8) == tokens


def test_title_tokens_capped() -> None:
    assert len(title_tokens("a b c d e f g h i j (2000)", max_tokens=4)) == 4


def test_decade() -> None:
    assert decade(1995) == 1990 and decade(2000) == 2000 and decade(None) is None


def test_decay_half_life() -> None:
    assert decay_factor(30 * DAY, 30.0) == pytest.approx(0.5)
    assert decay_factor(0, 30.0) == 1.0 and decay_factor(-5, 30.0) == 1.0


def test_user_state_statistics_and_affinity() -> None:
    genres = {1: ["Drama"], 2: ["Comedy", "Drama"], 3: ["Sci-Fi"]}
    events = [(1, 5.0, 0), (2, 3.0, 30 * DAY), (3, 4.0, 60 * DAY)]
    state = fold_user(events, genres, half_life_days=30.0, history_len=2)
    f = state.to_features()
    assert f["n_ratings"] == 3
    assert f["mean_rating"] == pytest.approx(4.0)
    assert f["std_rating"] == pytest.approx(np.std([5.0, 3.0, 4.0]))
    # Drama: 1 decayed twice (0.25) + 0.5 decayed once (0.25); Comedy: 0.5 decayed once; Sci-Fi: 1.
    drama, comedy, scifi = 0.25 + 0.25, 0.25, 1.0
    total = drama + comedy + scifi
    assert f["genre_affinity"] == {"Comedy": round(comedy / total, 6), "Drama": round(drama / total, 6),
                                   "Sci-Fi": round(scifi / total, 6)}
    assert f["top_genres"] == ["Sci-Fi", "Drama", "Comedy"]
    assert state.history == [(2, 3.0, 30 * DAY), (3, 4.0, 60 * DAY)]  # capped at history_len
    assert (f["first_ts"], f["last_ts"]) == (0, 60 * DAY)


def test_incremental_updates_equal_the_fold() -> None:
    """The stream applies update() per event; the batch folds: same state either way."""
    rng = np.random.default_rng(0)
    genres = {m: [g] for m, g in zip(range(20), ["Drama", "Comedy", "Action", "War"] * 5)}
    events = sorted((int(rng.integers(20)), float(rng.integers(1, 6)), int(rng.integers(0, 400 * DAY))) for _ in range(200))
    events = sorted(events, key=lambda e: e[2])
    batch = fold_user(events, genres, 30.0, 50).to_features()
    live = UserState.empty(50)
    for m, r, t in events:
        live.update(m, r, t, genres[m], 30.0)
    assert live.to_features() == batch


def test_empty_state() -> None:
    f = UserState.empty().to_features()
    assert f["n_ratings"] == 0 and f["genre_affinity"] == {} and f["top_genres"] == []


def test_top_genres_tie_break_is_canonical_order() -> None:
    assert top_genres({"War": 0.5, "Action": 0.5}, n=1) == ["Action"]


def test_bayes_mean() -> None:
    assert bayes_mean(5.0, 1, 3.5, 20) == pytest.approx((5 + 70) / 21)
    assert math.isclose(bayes_mean(4.0, 10_000, 3.0, 20), 4.0, rel_tol=1e-2)

"""The strong simple baselines (transition, EASE, their blend, biased MF) against hand-computed cases, and the
tuning criterion they are chosen by. Pure numpy / pandas: no Spark, TF or Redis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.baselines import (EASE, BiasedMF, _add_rows, BiasModel, Catalogue, EaseTransitionBlend, Transition, UserRow,
                             tune_sequence_baselines, validation_hit_rate)


def ratings(seqs: dict[int, list[int]], rating: float = 4.0) -> pd.DataFrame:
    rows = [(u, m, rating, p) for u, ms in seqs.items() for p, m in enumerate(ms)]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "pos"])


def test_transition_counts_what_was_rated_right_after_the_last_movie() -> None:
    cat = Catalogue(np.array([10, 20, 30, 40], np.int64))
    t = Transition(ratings({1: [10, 20, 30], 2: [10, 20], 3: [10, 30], 4: [40]}), cat)
    scores, _ = t.score([UserRow(9, np.array([40, 10]), np.array([3.0, 4.0]))])
    # after 10: 20 twice, 30 once; 10 and 40 never - popularity (< 1) only breaks ties
    assert scores[0, 1] > 2 > scores[0, 2] > 1 > scores[0, 0] > scores[0, 3]
    assert t.probabilities[0].tolist() == pytest.approx([0, 2 / 3, 1 / 3, 0])
    cross_user = t.counts[cat.positions(np.array([20]))[0], cat.positions(np.array([10]))[0]]
    assert cross_user == 0                                  # user 1's last movie does not lead into user 2's first


def test_ease_matches_the_closed_form_by_hand() -> None:
    # X = [[1,1],[1,1],[1,0]], lambda 1: G = [[4,2],[2,3]], P = G^-1 = [[3,-2],[-2,4]]/8,
    # B[0,1] = -P01/P11 = 1/2, B[1,0] = -P10/P00 = 2/3, diagonal 0
    cat = Catalogue(np.array([1, 2], np.int64))
    e = EASE(ratings({1: [1, 2], 2: [1, 2], 3: [1]}), cat, lam=1.0)
    assert e.weights == pytest.approx(np.array([[0, 0.5], [2 / 3, 0]]), abs=1e-6)
    s, _ = e.score([UserRow(5, np.array([1]), np.array([4.0])), UserRow(6, np.array([2]), np.array([4.0]))])
    assert s[0, 1] == pytest.approx(0.5) and s[1, 0] == pytest.approx(2 / 3)


def test_the_blend_adds_beta_times_the_transition_probability() -> None:
    cat = Catalogue(np.array([1, 2, 3], np.int64))
    train = ratings({1: [1, 2, 3], 2: [1, 3], 3: [2, 3]})
    e, t = EASE(train, cat, lam=5.0), Transition(train, cat)
    u = [UserRow(7, np.array([2, 1]), np.array([4.0, 4.0]))]
    blended = EaseTransitionBlend(e, t, beta=10.0).score(u)[0]
    assert blended == pytest.approx(e.score(u)[0] + 10.0 * t.probabilities[[0]], abs=1e-5)


def test_validation_hit_rate_masks_history_and_counts_ties_against() -> None:
    class Fixed:
        name = "fixed"

        def score(self, users: list[UserRow]) -> tuple[np.ndarray, np.ndarray]:
            return np.tile(np.array([5.0, 1.0, 1.0, 0.0]), (len(users), 1)), np.zeros((len(users), 4))

    cat = Catalogue(np.array([1, 2, 3, 4], np.int64))
    hist = [UserRow(1, np.array([1]), np.array([4.0])), UserRow(2, np.array([4]), np.array([4.0]))]
    # user 1: movie 1 is seen (masked), 2 and 3 tie at the top -> rank 2; user 2: 1 outranks 2, 3 ties -> rank 3
    assert validation_hit_rate(Fixed(), hist, np.array([2, 2]), cat, k=2) == 0.5
    assert validation_hit_rate(Fixed(), hist, np.array([2, 2]), cat, k=3) == 1.0


def test_tuning_picks_the_transition_when_sequences_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    chain = list(range(1, 31))
    seqs = {u: chain[s:s + 8] for u in range(1, 120) for s in [int(rng.integers(0, 20))]}
    frame = ratings(seqs)
    last = frame.groupby("user_id")["pos"].transform("max")
    train, val = frame[frame["pos"] < last], frame[frame["pos"] == last]
    cat = Catalogue(np.array(chain, np.int64))
    tuned = tune_sequence_baselines(train, val, cat)
    ease_best = max(v for k, v in tuned.validation.items() if k.startswith("ease"))
    blend_best = max(v for k, v in tuned.validation.items() if k.startswith("blend"))
    assert blend_best >= max(ease_best, 0.9)      # the next movie is the chain's next (when that pair was trained)
    history = [UserRow(int(u), g["movie_id"].to_numpy(), g["rating"].to_numpy()) for u, g in train.groupby("user_id")]
    assert validation_hit_rate(Transition(train, cat), history, val.sort_values("user_id")["movie_id"].to_numpy(),
                               cat, k=1) >= 0.9


def test_biased_mf_beats_the_bias_model_on_low_rank_ratings() -> None:
    rng = np.random.default_rng(1)
    users, movies = 300, 120
    p, q = rng.normal(0, 0.7, (users, 3)), rng.normal(0, 0.7, (movies, 3))
    pairs = rng.random((users, movies)) < 0.3
    u, m = np.nonzero(pairs)
    r = np.clip(3.5 + np.einsum("bf,bf->b", p[u], q[m]) + rng.normal(0, 0.3, len(u)), 1, 5)
    frame = pd.DataFrame({"user_id": u + 1, "movie_id": m + 1, "rating": r})
    test = rng.random(len(frame)) < 0.1
    train, held = frame[~test], frame[test]
    mf = BiasedMF(train, factors=16, lr=0.05, reg=0.02, seed=0)
    cat = Catalogue(np.arange(1, movies + 1, dtype=np.int64))
    bias = BiasModel(train, cat).predict_pairs(held["user_id"].to_numpy(), cat.positions(held["movie_id"].to_numpy()))
    mf_err = mf.predict_pairs(held["user_id"].to_numpy(), held["movie_id"].to_numpy()) - held["rating"].to_numpy()
    bias_err = bias - held["rating"].to_numpy()
    assert np.sqrt(np.mean(mf_err ** 2)) < 0.8 * np.sqrt(np.mean(bias_err ** 2))
    assert mf.predict_pairs(np.array([99999]), np.array([99999]))[0] == pytest.approx(np.clip(mf.mu, 0.5, 5))


def test_row_segment_sum_equals_add_at_with_repeated_rows() -> None:
    """The biased-MF update adds every rating's step, repeated users and movies included."""
    rng = np.random.default_rng(3)
    rows = np.array([4, 1, 4, 0, 4, 1], np.int64)
    delta = rng.normal(size=(len(rows), 3))
    expected, got = np.ones((6, 3)), np.ones((6, 3))
    np.add.at(expected, rows, delta)
    _add_rows(got, rows, delta)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.all(got[[2, 3, 5]] == 1.0)

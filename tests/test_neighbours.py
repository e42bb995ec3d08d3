"""The neighbour prior (model/neighbours.py): its tables and z by hand, save/load, and a fit on interactions
that learns what follows what. Pure numpy and pandas (the exported graph's copy is checked in
tests/test_model_export.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from model import neighbours as N
from model.vocab import Encoder


def _blend(weights: np.ndarray, probs: np.ndarray, beta: float) -> SimpleNamespace:
    return SimpleNamespace(ease=SimpleNamespace(weights=weights.astype(np.float32), lam=7.0),
                           transition=SimpleNamespace(probabilities=probs.astype(np.float32)), beta=beta)


def test_z_is_the_standardised_sum_of_ease_rows_plus_beta_times_the_last_movies_successors() -> None:
    # three prior movies at vocabulary indices 2, 3, 4; index 1 is outside the prior
    w = np.array([[0.0, 1.0, 2.0], [0.5, 0.0, 0.0], [0.0, 3.0, 0.0]])
    p = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    prior = N.NeighbourPrior.from_blend(_blend(w, p, beta=2.0), np.array([2, 3, 4]), vocab_size=4, successors=1)
    assert prior.size == 3 and prior.slot_of.tolist() == [3, 3, 0, 1, 2]
    # one successor kept per movie: the likeliest; a movie nobody followed keeps none
    assert prior.succ_idx[:, 0].tolist() == [2, 0, 3, 3] and prior.succ_p[:, 0].tolist() == [0.75, 1.0, 0.0, 0.0]
    hist = np.array([[0, 1, 3, 2],      # history movies 3 (slot 1) and 2 (slot 0), latest 2; 1 has no slot
                     [0, 0, 0, 0]])     # no history
    z = prior.z(hist)
    s = w[1] + w[0] + 2.0 * np.array([0.0, 0.0, 0.75])  # EASE rows of slots 1 and 0, successor of slot 0
    want = (s - s.mean()) / (s.std() + 1e-6)
    np.testing.assert_allclose(z[0], [0.0, 0.0, *want], rtol=1e-5)  # vocab 0 and 1: outside the prior
    assert not z[1].any()                                            # nothing known: all 0
    # a latest movie outside the prior adds no transition
    s2 = w[1]
    np.testing.assert_allclose(prior.z(np.array([[0, 0, 3, 1]]))[0, 2:], (s2 - s2.mean()) / (s2.std() + 1e-6),
                               rtol=1e-5)


def test_save_and_load_keep_every_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prior = N.NeighbourPrior.from_blend(_blend(rng.normal(size=(4, 4)), rng.random((4, 4)), 3.0),
                                        np.array([1, 2, 4, 5]), vocab_size=6, successors=2)
    prior.save(tmp_path / N.FILE)
    back = N.load(tmp_path)
    assert back is not None and (back.beta, back.lam) == (3.0, 7.0)
    hist = rng.integers(0, 7, size=(5, 3))
    np.testing.assert_array_equal(back.z(hist), prior.z(hist))
    assert N.load(tmp_path / "elsewhere") is None
    assert not list(tmp_path.glob(".tmp-*"))


def test_prior_movies_are_the_most_rated_that_the_vocabulary_knows() -> None:
    train = pd.DataFrame({"movie_id": [5, 5, 5, 7, 7, 9, 9, 11]})
    enc = Encoder((5, 9, 11))
    assert N.prior_movies(train, enc, 2).tolist() == [5, 9]     # 7 is not in the vocabulary
    assert N.prior_movies(train, enc, 10).tolist() == [5, 9, 11]


def test_a_fit_on_interactions_learns_what_follows_what() -> None:
    """Every user walks the cycle 1 -> 2 -> ... -> 12 from a random start: each movie's likeliest successor
    must be the next one, and with the transition term on, the prior's best unseen movie after m is m + 1
    (EASE alone, co-occurrence without order, cannot tell m + 1 from m - 1)."""
    import dataclasses

    rng = np.random.default_rng(0)
    rows = []
    for u in range(300):
        start, n = int(rng.integers(0, 12)), int(rng.integers(5, 9))
        seq = [(start + i) % 12 + 1 for i in range(n)]
        for pos, m in enumerate(seq):
            split = "test" if pos == n - 1 else "val" if pos == n - 2 else "train"
            rows.append((u, m, 4.0, pos, split))
    inter = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "pos", "split"])
    enc = Encoder(tuple(range(1, 13)))
    fitted = N.fit(inter, enc, max_movies=50, successors=3)
    prior = fitted.exported
    assert prior.size == 12 and set(fitted.info()) >= {"movies", "lambda", "beta", "validation_hr@10"}
    slot = prior.slot_of[enc.encode(list(range(1, 13)))]
    nxt = prior.slot_of[enc.encode([m % 12 + 1 for m in range(1, 13)])]
    assert prior.succ_idx[slot, 0].tolist() == nxt.tolist() and np.allclose(prior.succ_p[slot, 0], 1.0)
    with_order = dataclasses.replace(prior, beta=max(prior.beta, 1.0))
    for last in (3, 12):
        hist = np.array([[0, 0, enc.encode([(last - 2) % 12 + 1])[0], enc.encode([last])[0]]])
        z = with_order.z(hist)[0]
        z[hist[0]] = -np.inf
        assert enc.values[int(np.argmax(z)) - 1] == last % 12 + 1
    # test rows are never read: moving them changes nothing
    shuffled = inter.copy()
    shuffled.loc[shuffled["split"] == "test", "movie_id"] = 1
    again = N.fit(shuffled, enc, max_movies=50, successors=3)
    np.testing.assert_array_equal(again.exported.ease, fitted.exported.ease)


@pytest.mark.parametrize("text, message", [
    ("[model]\nneighbour_weight = -0.5", "model.neighbour_weight must be >= 0 or -1"),
    ("[model]\nneighbour_max_movies = 0", "model.neighbour_max_movies must be at least 1"),
    ("[model]\nneighbour_max_movies = 30000", "model.neighbour_max_movies must be at most 20000"),
    ("[model]\nneighbour_successors = 0", "model.neighbour_successors must be at least 1"),
    ("[model]\nhard_negatives = -1", "model.hard_negatives must be >= 0"),
    ("[model]\nlistwise_weight = -1.0", "model.listwise_weight must be >= 0"),
    ("[samples]\nnegatives = 0", "model.hard_negatives needs samples.negatives >= 1"),
])
def test_config_bounds_of_the_prior(tmp_path: Path, text: str, message: str) -> None:
    from pipeline.config import ConfigError, load_config

    (tmp_path / "recsys.toml").write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(home=tmp_path, environ={})
    (tmp_path / "recsys.toml").write_text("[model]\nneighbour_weight = 0.0\n", encoding="utf-8")
    assert load_config(home=tmp_path, environ={}).model.neighbour_weight == 0.0


def test_hard_negatives_are_successors_of_the_latest_movie_never_rated_else_the_uniform_ones() -> None:
    # prior over vocabulary indices 1..4; successors: 1 -> {2, 3}, 2 -> {4}, 3 -> none
    p = np.array([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0] * 4, [0.0] * 4])
    prior = N.NeighbourPrior.from_blend(_blend(np.zeros((4, 4)), p, 1.0), np.array([1, 2, 3, 4]), 4, successors=2)
    assert sorted(prior.successors(np.array([1]))[0].tolist()) == [2, 3] and prior.successors(np.array([0])).max() == 0
    last = np.array([1, 1, 2, 3])
    users = np.array([10, 11, 12, 13])
    rated = np.array([11 * (1 << 32) + 3, 12 * (1 << 32) + 4])           # user 11 rated 3, user 12 rated 4
    fallback = np.array([[9, 8], [9, 8], [9, 8], [9, 8]])
    got = N.hard_negatives(prior, last, users, fallback, rated, k=20, seed=0)
    assert got.shape == (4, 20)
    assert set(got[0]) == {2, 3}                      # both successors of 1 drawn
    assert set(got[1]) <= {2, 9, 8} and 2 in got[1]   # 3 was rated by user 11: its draws fall back
    assert set(got[2]) == {9, 8}                      # 2's only successor was rated
    assert set(got[3]) == {9, 8}                      # 3 has no successors
    np.testing.assert_array_equal(got, N.hard_negatives(prior, last, users, fallback, rated, k=20, seed=0))
    with pytest.raises(ValueError, match="at least one uniform negative"):
        N.hard_negatives(prior, last, users, fallback[:, :0], rated, k=2, seed=0)

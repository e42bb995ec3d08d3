"""The next-movie sequence model: its windows and metrics by hand, and a real (small) Keras fit that learns a
sequential rule a popularity count cannot."""

from __future__ import annotations

import numpy as np
import pytest

from model import sequence as S


def test_windows_end_at_the_last_movie_and_step_back_by_the_length() -> None:
    x, y = S.windows([np.array([1, 2, 3, 4, 5], np.int32)], length=3)
    assert x.tolist() == [[2, 3, 4], [0, 0, 1]] and y.tolist() == [[3, 4, 5], [0, 0, 2]]
    assert S.windows([np.array([7], np.int32)], 3)[0].shape == (0, 3)          # one movie: nothing to predict
    x, y = S.windows([np.array([1, 2, 3, 4, 5], np.int32)], length=3, stride=2)  # overlapping windows
    assert x.tolist() == [[2, 3, 4], [0, 1, 2]] and y.tolist() == [[3, 4, 5], [0, 2, 3]]
    assert S.last_window([np.array([1, 2, 3, 4]), np.array([9])], 3).tolist() == [[2, 3, 4], [0, 0, 9]]


def test_hit_rate_masks_history_and_padding_and_counts_ties_against() -> None:
    logits = np.array([[9.0, 5.0, 1.0, 1.0], [9.0, 5.0, 4.0, 3.0]])
    hr, ndcg = S.hit_rate(logits, [np.array([1]), np.array([], np.int32)], np.array([2, 2]), k=1)
    # user 0: movie 1 masked, 2 and 3 tie -> rank 2 (miss at k=1); user 1: 1 outranks 2 -> rank 2
    assert (hr, ndcg) == (0.0, 0.0)
    hr, ndcg = S.hit_rate(logits, [np.array([1, 3]), np.array([1])], np.array([2, 2]), k=1)
    assert hr == 1.0 and ndcg == pytest.approx(1.0)


def test_the_mix_centres_a_new_movie_and_orders_by_the_chosen_share() -> None:
    ranker = np.array([[0.5, 0.9, 0.1]])
    logp = S.log_softmax(np.array([[0.0, -5.0, 5.0]]))
    assert np.exp(logp[0, 1:]).sum() == pytest.approx(1.0) and logp[0, 0] <= -1e9
    z0 = S.mixed_logit(ranker, logp, 0.0, n_movies=2)
    z1 = S.mixed_logit(ranker, logp, 1.0, n_movies=2)
    assert z0[0, 1] > z0[0, 2] and z1[0, 2] > z1[0, 1]                     # ranker alone vs sequence alone
    uniform = S.mixed_logit(np.array([[0.5]]), np.log(np.array([[0.5]])), 1.0, n_movies=2)
    assert uniform[0, 0] == pytest.approx(0.0)                             # a uniform guess sits at 0
    mix, weight, table = S.choose_mix(np.tile(ranker, (2, 1)), np.tile(logp, (2, 1)), [np.array([], np.int32)] * 2,
                                      np.array([2, 2]), n_movies=2)
    assert mix > 0 and weight == 0 and set(table) == {f"{m:g}" for m in S.MIX_GRID}


def test_the_neighbour_prior_is_added_to_the_logit_and_chosen_only_where_it_helps() -> None:
    ranker = np.array([[0.5, 0.9, 0.2, 0.1]])
    logp = S.log_softmax(np.array([[0.0, 3.0, 0.0, -1.0]]))
    z = np.array([[0.0, -1.0, 0.0, 3.0]])
    base = S.mixed_logit(ranker, logp, 0.5, n_movies=3)
    np.testing.assert_allclose(S.mixed_logit(ranker, logp, 0.5, 3, z, 2.0), base + 2.0 * z)
    np.testing.assert_allclose(S.mixed_logit(ranker, logp, 0.5, 3, z, 0.0), base)
    empty = [np.array([], np.int32)] * 2
    # target 3: only the prior puts it first -> a weight above 0; target 1: the prior only hurts -> weight 0
    mix, weight, table = S.choose_mix(np.tile(ranker, (2, 1)), np.tile(logp, (2, 1)), empty, np.array([3, 3]), 3,
                                      np.tile(z, (2, 1)))
    assert weight > 0 and set(table) == {f"{m:g}/{w:g}" for m in S.MIX_GRID for w in S.NEIGHBOUR_WEIGHTS}
    mix, weight, _ = S.choose_mix(np.tile(ranker, (2, 1)), np.tile(logp, (2, 1)), empty, np.array([1, 1]), 3,
                                  np.tile(z, (2, 1)))
    assert weight == 0 and mix == 0                       # ties go to the earliest grid point
    # a configured mix or weight is a one-value grid
    assert S.choose_mix(ranker, logp, empty[:1], np.array([3]), 3, z, weights=(0.25,), mixes=(0.4,))[:2] == (0.4, 0.25)
    assert S.recall_order_weight(0.5, 0.25) == 0.5 and S.recall_order_weight(0.0, 0.25) == 5.0


@pytest.mark.tf
def test_a_small_fit_learns_what_follows_what() -> None:
    """Every user walks the same cycle 1 -> 2 -> ... -> 20 from a random start: the next movie is a function of
    the last one, which popularity cannot see and the trained model must."""
    rng = np.random.default_rng(0)
    cycle = np.arange(1, 21, dtype=np.int32)
    seqs = [np.roll(cycle, -int(rng.integers(0, 20)))[:int(rng.integers(6, 15))] for _ in range(200)]
    train, history, targets = [s[:-1] for s in seqs], [s[:-1] for s in seqs], np.array([s[-1] for s in seqs])
    spec = S.SequenceSpec(n_movies=20, length=8, dim=16, blocks=1, dropout=0.0)
    model, summary = S.fit(spec, train, history, targets, epochs=30, patience=30, batch_size=32,
                           learning_rate=5e-3, seed=1)
    hr, _ = S.hit_rate(S.next_logits(model, history, spec.length), history, targets, k=1)
    popular = np.bincount(np.concatenate(train), minlength=21).astype(float)[None].repeat(len(seqs), 0)
    pop_hr, _ = S.hit_rate(popular, history, targets, k=1)
    assert hr > 0.9 > pop_hr + 0.5 and summary["best"]["val_hr@10"] == max(r["val_hr@10"] for r in summary["history"])


@pytest.mark.tf
def test_the_time_budget_ends_training_after_the_first_epoch_that_leaves_no_room() -> None:
    seqs = [np.arange(1, 9, dtype=np.int32) for _ in range(8)]
    spec = S.SequenceSpec(n_movies=8, length=4, dim=8, blocks=1, dropout=0.0)
    hist, targets = [s[:-1] for s in seqs], np.array([s[-1] for s in seqs])
    _, summary = S.fit(spec, seqs, hist, targets, epochs=5, patience=5, batch_size=4, budget_s=1e-6)
    assert summary["epochs_run"] == 1 and summary["stopped_by_budget"]
    _, free = S.fit(spec, seqs, hist, targets, epochs=2, patience=5, batch_size=4)
    assert free["epochs_run"] == 2 and not free["stopped_by_budget"]


@pytest.mark.tf
def test_saved_weights_load_back_exactly(tmp_path) -> None:  # noqa: ANN001
    spec = S.SequenceSpec(n_movies=12, length=5, dim=8, blocks=2, dropout=0.1, lstm=True)
    model = S.build_encoder(spec)
    S.save(model, spec, tmp_path, {"mix": 0.5})
    again, record = S.load(tmp_path)
    x = [np.array([3, 1, 4, 1, 5]), np.array([9, 2])]
    np.testing.assert_allclose(S.next_logits(again, x, 5), S.next_logits(model, x, 5), rtol=1e-6)
    assert record["mix"] == 0.5 and len(model.weights) == len(again.weights) > 2 * 8


@pytest.mark.tf
def test_last_logits_are_the_last_position_of_the_full_logits() -> None:
    spec = S.SequenceSpec(n_movies=12, length=5, dim=8, blocks=2, dropout=0.1, lstm=True)
    model = S.build_encoder(spec)
    x = S.last_window([np.array([3, 1, 4, 1, 5]), np.array([9, 2])], 5)
    np.testing.assert_allclose(np.asarray(model.last_logits(x)), np.asarray(model(x))[:, -1, :], rtol=1e-5, atol=1e-6)

"""`model.trainer.TimeBudget`: when a training run stops for the wall-clock bound (pure logic, a fake clock).

The bound itself (`model.train_budget_s`, 1M ratings within 20 min) is measured in `bench/train_bench.py`, not
here: no test asserts a duration.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.trainer import TimeBudget


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Model:
    stop_training = False


def _budget(seconds: float) -> tuple[TimeBudget, _Clock, _Model]:
    clock, model = _Clock(), _Model()
    cb = TimeBudget(seconds, clock=clock)
    cb.set_model(model)
    cb.on_train_begin()
    return cb, clock, model


def test_stops_after_an_epoch_when_the_next_would_not_fit() -> None:
    cb, clock, model = _budget(100.0)
    cb.on_epoch_begin(0)
    clock.now = 40.0
    cb.on_epoch_end(0)                      # 40 + 40 <= 100: go on
    assert not model.stop_training and not cb.stopped
    cb.on_epoch_begin(1)
    clock.now = 80.0
    cb.on_epoch_end(1)                      # 80 + 40 > 100: stop before epoch 3
    assert model.stop_training and cb.stopped


def test_stops_inside_an_epoch_once_the_bound_is_spent() -> None:
    cb, clock, model = _budget(100.0)
    cb.on_epoch_begin(0)
    clock.now = 99.0
    cb.on_train_batch_end(0)
    assert not model.stop_training
    clock.now = 100.5
    cb.on_train_batch_end(1)
    assert model.stop_training and cb.stopped


def test_zero_means_no_bound() -> None:
    cb, clock, model = _budget(0.0)
    cb.on_epoch_begin(0)
    clock.now = 1e9
    cb.on_train_batch_end(0)
    cb.on_epoch_end(0)
    assert not model.stop_training and not cb.stopped


def test_the_ranker_gets_what_the_next_movie_model_left_less_the_reserve() -> None:
    from model.train import FINISH_RESERVE_S, ranker_seconds

    assert ranker_seconds(1080.0, 200.0) == 1080.0 - 200.0 - FINISH_RESERVE_S
    assert ranker_seconds(1080.0, 1075.0) == 1.0      # overrun already: one step, then the bound stops it
    assert ranker_seconds(0.0, 5000.0) == 0.0          # no bound configured

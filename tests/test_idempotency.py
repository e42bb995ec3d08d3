"""The gateway's memory of idempotency keys (``serving.idempotency.RecentKeys``): pure logic, a scripted clock."""

from __future__ import annotations

import threading

import pytest

from serving.idempotency import KeyInProgress, KeyReused, RecentKeys
from tests.conftest import Clock


def test_the_action_runs_once_per_key_within_the_window() -> None:
    clock, ran = Clock(), []
    recent = RecentKeys(max_entries=10, ttl_s=60, clock=clock)
    assert recent.once((1, "a"), "fp", lambda: ran.append("a")) is True
    assert recent.once((1, "a"), "fp", lambda: ran.append("a again")) is False
    assert recent.once((2, "a"), "fp", lambda: ran.append("user 2")) is True     # scoped by user
    clock.now += 59
    assert recent.once((1, "a"), "fp", lambda: ran.append("a at 59 s")) is False
    clock.now += 2                                                                  # 61 s after the first call
    assert recent.once((1, "a"), "fp", lambda: ran.append("a after the window")) is True
    assert ran == ["a", "user 2", "a after the window"]


def test_the_map_is_bounded_and_forgets_the_oldest_first() -> None:
    recent = RecentKeys(max_entries=3, ttl_s=60, clock=Clock())
    for k in "abcd":
        recent.once(k, "fp", lambda: None)
    assert len(recent) == 3
    assert recent.once("a", "fp", lambda: None) is True        # the oldest was dropped
    assert recent.once("d", "fp", lambda: None) is False


def test_a_key_reused_for_another_request_is_refused() -> None:
    recent = RecentKeys(max_entries=10, ttl_s=60, clock=Clock())
    recent.once("k", (1193, 4.5), lambda: None)
    with pytest.raises(KeyReused):
        recent.once("k", (1193, 3.0), lambda: None)


def test_a_failed_first_call_is_forgotten_so_the_retry_runs() -> None:
    recent, ran = RecentKeys(max_entries=10, ttl_s=60, clock=Clock()), []

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        recent.once("k", "fp", fail)
    assert recent.once("k", "fp", lambda: ran.append(1)) is True and ran == [1]


def test_concurrent_duplicates_wait_for_the_first_and_run_nothing() -> None:
    recent = RecentKeys(max_entries=10, ttl_s=60, wait_s=30)
    entered, release, ran, results = threading.Event(), threading.Event(), [], []

    def slow() -> None:
        entered.set()
        release.wait(30)
        ran.append(1)

    first = threading.Thread(target=lambda: results.append(recent.once("k", "fp", slow)))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=lambda: results.append(recent.once("k", "fp", lambda: ran.append(2))))
              for _ in range(4)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert ran == [1] and sorted(results) == [False] * 4 + [True]


def test_a_duplicate_gives_up_waiting_after_wait_s() -> None:
    recent = RecentKeys(max_entries=10, ttl_s=60, wait_s=0.05)
    entered, release = threading.Event(), threading.Event()
    first = threading.Thread(target=recent.once, args=("k", "fp", lambda: (entered.set(), release.wait(30))))
    first.start()
    try:
        assert entered.wait(30)
        with pytest.raises(KeyInProgress):
            recent.once("k", "fp", lambda: None)
    finally:
        release.set()
        first.join(30)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        RecentKeys(max_entries=0, ttl_s=60)

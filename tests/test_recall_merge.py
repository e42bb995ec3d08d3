"""Recall channels and their fusion, on a hand-built in-memory store (pure logic, no services)."""

from __future__ import annotations

import pytest

from pipeline import keys as K
from pipeline.config import load_config
from pipeline.recall import CHANNELS, RRF_K, RecallContext, fuse, merge, run_channels
from pipeline.store import InMemoryStore, PublishedVersion


@pytest.fixture
def store() -> InMemoryStore:
    published = PublishedVersion(
        user_lists={"als": {1: [(10, 0.9), (11, 0.8), (1, 0.7), (12, 0.6)]}},
        item_lists={"next": {1: [(20, 0.5), (21, 0.3)], 2: [(21, 0.9), (22, 0.1)]}, "similar": {2: [(30, 0.8), (1, 0.7)]}},
        global_lists={K.list_popular(): [(1, 100.0), (40, 90.0), (41, 80.0)],
                      K.list_popular("Drama"): [(50, 10.0), (51, 9.0)], K.list_popular("War"): [(60, 5.0)],
                      K.list_demographic(25, "F"): [(70, 3.0), (1, 2.0)],
                      K.list_toprated(): [(80, 4.5)]})
    return InMemoryStore({"v1": published}, current="v1", trending=[(90, 12.0), (1, 10.0)])


def ctx(**kw) -> RecallContext:  # noqa: ANN003
    base = dict(user_id=1, history=[(1, 4.0, 100), (2, 5.0, 200)], age_bucket=25, gender="F",
                top_genres=["Drama", "War"], exclude={1, 2})
    base.update(kw)
    return RecallContext(**base)


def test_sequential_weights_recent_seeds_higher(store: InMemoryStore) -> None:
    got = CHANNELS["sequential"](ctx(), store, 10, 10)
    # latest seed (2) weight 1, previous (1) weight 1/2: 21 -> 0.9 + 0.15, 20 -> 0.25, 22 -> 0.1
    assert [m for m, _ in got] == [21, 20, 22]
    assert got[0][1] == pytest.approx(1.05)


def test_channels_exclude_seen_and_respect_quota(store: InMemoryStore) -> None:
    assert CHANNELS["als"](ctx(), store, 2, 10) == [(10, 0.9), (11, 0.8)]
    assert 1 not in [m for m, _ in CHANNELS["item_similar"](ctx(), store, 10, 10)]
    assert CHANNELS["popular"](ctx(), store, 10, 10) == [(40, 90.0), (41, 80.0)]
    assert [m for m, _ in CHANNELS["genre_popular"](ctx(), store, 10, 10)] == [50, 60, 51]
    assert CHANNELS["demographic_popular"](ctx(), store, 10, 10) == [(70, 3.0)]
    assert CHANNELS["trending"](ctx(), store, 5, 10) == [(90, 12.0)]
    assert CHANNELS["toprated"](ctx(), store, 5, 10) == [(80, 1.0)]


def test_fuse_is_reciprocal_rank_fusion() -> None:
    fused = fuse({"a": [(1, 9.0), (2, 8.0)], "b": [(2, 1.0), (3, 0.5)]}, size=10)
    assert [c.movie_id for c in fused] == [2, 1, 3]
    assert fused[0].sources == ["a", "b"]
    assert fused[0].score == pytest.approx(round(1 / (RRF_K + 2) + 1 / (RRF_K + 1), 6))
    assert len(fuse({"a": [(i, 1.0) for i in range(50)]}, size=7)) == 7


def test_merge_known_user_uses_configured_channels(store: InMemoryStore, tmp_path) -> None:  # noqa: ANN001
    cfg = load_config(home=tmp_path, environ={}).replace("recall", merged_size=5)
    merged = merge(ctx(), store, cfg.recall)
    assert len(merged) == 5
    assert not {c.movie_id for c in merged} & {1, 2}
    per = run_channels(ctx(), store, cfg.recall)
    assert list(per) == cfg.recall.channels


def test_cold_user_gets_cold_start_channels(store: InMemoryStore, tmp_path) -> None:  # noqa: ANN001
    cfg = load_config(home=tmp_path, environ={})
    cold = ctx(user_id=999, history=[], exclude=set(), top_genres=[], age_bucket=None, gender=None)
    per = run_channels(cold, store, cfg.recall)
    assert list(per) == cfg.recall.cold_start_channels
    merged = merge(cold, store, cfg.recall)
    assert [c.movie_id for c in merged][:1] == [1] and merged  # the most popular movie leads


def test_a_kept_channel_joins_whole_after_the_cut() -> None:
    per = {"a": [(1, 9.0), (2, 8.0), (3, 7.0)], "model": [(2, 0.0), (7, 0.0), (8, 0.0), (9, 0.0)]}
    cut = fuse(per, size=2)
    assert [c.movie_id for c in cut] == [2, 1]                      # 2 is in both lists: it rises
    kept = fuse(per, size=2, kept=("model",))
    assert [c.movie_id for c in kept] == [2, 1, 7, 8, 9]            # the model's whole list is ranked
    assert kept[2].sources == ["model"] and kept[0].sources == ["a", "model"]
    assert [c.movie_id for c in fuse(per, size=10, kept=("model",))] == [c.movie_id for c in fuse(per, size=10)]

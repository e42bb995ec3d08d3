"""The Spark batch plane on a small synthetic dataset: every job's outputs, checked
against independent pandas computations on the same input (real Spark, real Redis)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from pipeline import keys as K
from pipeline import movielens as ml
from pipeline.features import fold_user
from pipeline.home import Home, table_path
from pipeline.store import RedisStore

pytestmark = [pytest.mark.spark, pytest.mark.redis]


def _t(batch: dict, name: str) -> pd.DataFrame:
    return pd.read_parquet(table_path(Home(batch["cfg"].home), batch["version"], name))


@pytest.fixture(scope="module")
def raw(small_data: Path) -> dict[str, pd.DataFrame]:
    return {t: ml.read_table(small_data, t)[0] for t in ("ratings", "movies", "users")}


def test_manifest_complete_and_current(p1_batch: dict) -> None:
    home = Home(p1_batch["cfg"].home)
    assert home.current_version() == p1_batch["version"]
    manifest = home.read_manifest(p1_batch["version"])
    assert manifest["status"] == "complete"
    assert sorted(manifest["steps"]) == sorted(["ingest", "prepare", "features", "recall", "samples", "publish"])
    assert manifest["split"] == "p1"


def test_ingest_tables_equal_the_files(p1_batch: dict, raw: dict) -> None:
    for table in ("ratings", "movies", "users"):
        got = _t(p1_batch, table).sort_values(list(raw[table].columns[:2])).reset_index(drop=True)
        want = raw[table].sort_values(list(raw[table].columns[:2])).reset_index(drop=True)
        assert len(got) == len(want)
        as_py = lambda df: df.astype(object).where(df.notna(), None)  # noqa: E731 - NaN and <NA> both mean null
        pd.testing.assert_frame_equal(as_py(got[want.columns]), as_py(want), check_dtype=False)
    assert len(_t(p1_batch, "tags")) == 0  # ML-1M has no tags file


def test_interactions_leave_one_out(p1_batch: dict, raw: dict) -> None:
    inter = _t(p1_batch, "interactions")
    r = raw["ratings"]
    movie_counts = r["movie_id"].value_counts()
    kept = r[r["movie_id"].isin(movie_counts[movie_counts >= 5].index)]
    user_counts = kept["user_id"].value_counts()
    kept = kept[kept["user_id"].isin(user_counts[user_counts >= 5].index)]
    assert len(inter) == len(kept)
    for user_id, grp in kept.groupby("user_id"):
        seq = grp.sort_values(["ts", "line"], kind="mergesort")["movie_id"].tolist()
        mine = inter[inter["user_id"] == user_id].sort_values("pos")
        assert mine["movie_id"].tolist() == seq
        assert mine["split"].tolist() == ["train"] * (len(seq) - 2) + ["val", "test"]


def test_user_features_match_fold_over_visible_history(p1_batch: dict) -> None:
    cfg = p1_batch["cfg"]
    inter = _t(p1_batch, "interactions")
    movies = _t(p1_batch, "movies")
    genres_of = {int(m): list(g) for m, g in zip(movies["movie_id"], movies["genres"])}
    uf = _t(p1_batch, "user_features").set_index("user_id")
    assert len(uf) == inter["user_id"].nunique()
    for user_id in inter["user_id"].unique()[:25]:
        visible = inter[(inter["user_id"] == user_id) & (inter["split"] != "test")].sort_values("pos")
        state = fold_user(zip(visible["movie_id"], visible["rating"], visible["ts"]), genres_of,
                          cfg.features.genre_half_life_days, cfg.features.history_len)
        row = uf.loc[user_id]
        assert row["n_ratings"] == len(visible)
        assert row["mean_rating"] == pytest.approx(visible["rating"].mean(), abs=1e-5)
        assert row["std_rating"] == pytest.approx(visible["rating"].std(ddof=0), abs=1e-5)
        assert json.loads(row["genre_affinity"]) == state.to_features()["genre_affinity"]
        hist = json.loads(row["history"])
        assert [h[0] for h in hist] == visible["movie_id"].tolist()[-cfg.features.history_len:]
        assert sorted(row["seen"]) == sorted(set(visible["movie_id"]))


def test_movie_features_fit_on_train_only(p1_batch: dict) -> None:
    inter = _t(p1_batch, "interactions")
    train = inter[inter["split"] == "train"]
    mf = _t(p1_batch, "movie_features").set_index("movie_id")
    stats = train.groupby("movie_id")["rating"].agg(["count", "mean"])
    for movie_id, s in stats.head(40).iterrows():
        assert mf.loc[movie_id, "n_ratings"] == s["count"]
        assert mf.loc[movie_id, "mean_rating"] == pytest.approx(s["mean"], abs=1e-5)
        assert mf.loc[movie_id, "decade"] == (mf.loc[movie_id, "year"] // 10) * 10
    assert set(mf.index[mf["in_catalog"]]) == set(inter["movie_id"])


def test_als_lists_exclude_visible_history(p1_batch: dict) -> None:
    cfg = p1_batch["cfg"]
    inter = _t(p1_batch, "interactions")
    als = _t(p1_batch, "recall_als")
    visible = inter[inter["split"] != "test"].groupby("user_id")["movie_id"].apply(set)
    catalog = set(inter["movie_id"])
    assert len(als) == inter["user_id"].nunique()
    for row in als.itertuples():
        items = list(row.items)
        assert 0 < len(items) <= cfg.recall.als_top_n
        assert not set(items) & visible[row.user_id]
        assert set(items) <= catalog
        assert list(row.scores) == sorted(row.scores, reverse=True)


def test_similar_and_next_lists(p1_batch: dict) -> None:
    cfg = p1_batch["cfg"]
    sim = _t(p1_batch, "recall_similar")
    assert len(sim) > 0
    for row in sim.itertuples():
        assert row.movie_id not in set(row.items)
        assert len(row.items) <= cfg.recall.similar_k
    # 'next' lists must equal an independent count of what followed each movie in train sequences.
    inter = _t(p1_batch, "interactions")
    train = inter[inter["split"] == "train"].sort_values(["user_id", "pos"])
    weights: dict[tuple[int, int], float] = {}
    for _, grp in train.groupby("user_id"):
        seq = grp["movie_id"].tolist()
        for i, a in enumerate(seq):
            for gap in range(1, cfg.recall.sequential_window + 1):
                if i + gap < len(seq) and seq[i + gap] != a:
                    weights[(a, seq[i + gap])] = weights.get((a, seq[i + gap]), 0.0) + 1.0 / gap
    nxt = _t(p1_batch, "recall_next").set_index("movie_id")
    for movie_id in list(nxt.index)[:30]:
        out = {b: w for (a, b), w in weights.items() if a == movie_id}
        total = sum(out.values())
        expected = sorted((w / total for w in out.values()), reverse=True)[: cfg.recall.sequential_k]
        row = nxt.loc[movie_id]
        # Same scores in the same order; ties may list equal-score movies in either order.
        np.testing.assert_allclose(row["scores"], expected, rtol=1e-5)
        for item, score in zip(row["items"], row["scores"]):
            assert out[item] / total == pytest.approx(score, rel=1e-5)


def test_global_lists(p1_batch: dict) -> None:
    lists = _t(p1_batch, "recall_lists").set_index("name")
    inter = _t(p1_batch, "interactions")
    train = inter[inter["split"] == "train"]
    counts = train["movie_id"].value_counts()
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert list(lists.loc["popular:all", "items"])[:10] == [m for m, _ in expected]
    assert "popular:genre:Drama" in lists.index and "toprated:all" in lists.index
    assert any(n.startswith("popular:demo:") for n in lists.index)


def test_examples_point_in_time(p1_batch: dict) -> None:
    cfg = p1_batch["cfg"]
    ex = _t(p1_batch, "examples")
    inter = _t(p1_batch, "interactions")
    assert len(ex) == len(inter)
    assert set(ex["split"]) == {"train", "val", "test"}
    rated = inter.groupby("user_id")["movie_id"].apply(set)
    for user_id in inter["user_id"].unique()[:20]:
        seq = inter[inter["user_id"] == user_id].sort_values("pos")
        mine = ex[ex["user_id"] == user_id].sort_values("pos")
        movies, ratings = seq["movie_id"].tolist(), seq["rating"].tolist()
        for i, row in enumerate(mine.itertuples()):
            assert row.movie_id == movies[i]
            lo = max(0, i - cfg.samples.history_len)
            assert list(row.hist_movies) == movies[lo:i]          # strictly before the event
            assert list(row.hist_ratings) == pytest.approx(ratings[lo:i])
            assert row.n_before == i
            assert row.mean_before == pytest.approx(np.mean(ratings[:i]) if i else 0.0, abs=1e-5)
            assert len(row.negatives) == cfg.samples.negatives
            assert not set(row.negatives) & rated[user_id]       # never rated, at any time
    vocab = json.loads(table_path(Home(cfg.home), p1_batch["version"], "vocab.json").read_text())
    assert set(vocab["movie_id"]) >= set(inter["movie_id"])
    held = _t(p1_batch, "heldout").set_index("user_id")
    tests = inter[inter["split"] == "test"].set_index("user_id")
    assert (held.loc[tests.index, "test_movie"] == tests["movie_id"]).all()


def test_published_to_redis(p1_batch: dict, redis_client: redis.Redis) -> None:
    cfg = p1_batch["cfg"]
    store = RedisStore(redis_client, cfg.redis.key_prefix)
    assert store.manifest()["batch_version"] == p1_batch["version"]
    uf = _t(p1_batch, "user_features").set_index("user_id")
    user_id = int(uf.index[0])
    ctx, feats = store.user_context(user_id)
    assert feats["n_ratings"] == uf.loc[user_id, "n_ratings"]
    assert ctx.exclude == set(uf.loc[user_id, "seen"])
    assert [m for m, _, _ in ctx.history] == [h[0] for h in json.loads(uf.loc[user_id, "history"])]
    als = _t(p1_batch, "recall_als").set_index("user_id")
    assert [m for m, _ in store.user_list("als", user_id)] == list(als.loc[user_id, "items"])
    assert store.global_list(K.list_popular())
    movie = redis_client.hgetall(store.keys.movie(store.version, int(als.loc[user_id, "items"][0])))
    assert json.loads(movie[b"title"])

"""`recsys evaluate --stage recall` on a real P1 build: coverage and the popularity baseline,
checked against an independent computation from the warehouse tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import redis

from recsys import cli
from pipeline.evaluate import EvaluationError, evaluate_recall, load_heldout
from pipeline.home import Home, table_path
from tests.conftest import make_config

pytestmark = [pytest.mark.spark, pytest.mark.redis]


def _metrics(report, model: str) -> dict:  # noqa: ANN001
    return next(r.metrics for r in report.rows if r.model == model)


def test_recall_coverage_and_popularity_baseline(p1_batch: dict, redis_client: redis.Redis) -> None:
    cfg = p1_batch["cfg"]
    report = evaluate_recall(cfg, redis_client, k=10)
    home, v = Home(cfg.home), p1_batch["version"]
    inter = pd.read_parquet(table_path(home, v, "interactions"))
    assert report.info["users"] == inter["user_id"].nunique()
    channels = [r for r in report.rows if r.model.startswith("recall:") and r.model != "recall:merged"]
    assert [r.model for r in channels] == [f"recall:{c}" for c in cfg.recall.channels]
    merged = _metrics(report, "recall:merged")
    assert 0 < merged["coverage"] <= 1
    assert merged["coverage"] >= max(r.metrics["coverage"] for r in channels)
    assert merged["mean_candidates"] <= cfg.recall.merged_size
    # Independent popularity baseline: train counts, minus what the user saw (train + val).
    train = inter[inter["split"] == "train"]
    counts = sorted(train["movie_id"].value_counts().items(), key=lambda kv: (-kv[1], kv[0]))
    ranking = [m for m, _ in counts]
    seen = inter[inter["split"] != "test"].groupby("user_id")["movie_id"].apply(set)
    hits, ndcg = [], []
    for row in inter[inter["split"] == "test"].itertuples():
        top = [m for m in ranking if m not in seen[row.user_id]][:10]
        rank = top.index(row.movie_id) + 1 if row.movie_id in top else None
        hits.append(1.0 if rank else 0.0)
        ndcg.append(1 / math.log2(rank + 1) if rank else 0.0)
    pop = _metrics(report, "baseline:popularity")
    assert pop["HR@10"] == pytest.approx(sum(hits) / len(hits), abs=1e-4)
    assert pop["NDCG@10"] == pytest.approx(sum(ndcg) / len(ndcg), abs=1e-4)


def test_cli_evaluate_writes_json(p1_batch: dict, redis_srv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    cfg = p1_batch["cfg"]
    monkeypatch.setenv("RECSYS_REDIS_URL", redis_srv.url)
    monkeypatch.setenv("RECSYS_REDIS_KEY_PREFIX", cfg.redis.key_prefix)
    for name in ("ALS_RANK", "MERGED_SIZE"):
        monkeypatch.setenv(f"RECSYS_RECALL_{name}", str(getattr(cfg.recall, name.lower())))
    out = tmp_path / "eval.json"
    assert cli.main(["--home", str(cfg.home), "evaluate", "--stage", "recall", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["info"]["batch_version"] == p1_batch["version"]
    models = [r["model"] for r in data["rows"]]
    assert "recall:merged" in models and "baseline:popularity" in models
    assert "recall:merged" in capsys.readouterr().out


def test_evaluate_refuses_a_serving_build(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "home")
    home = Home(cfg.home)
    home.write_manifest("v20260101T000000000Z", {"split": "none", "status": "complete"})
    home.set_current_version("v20260101T000000000Z")
    with pytest.raises(EvaluationError, match="recsys batch --split p1"):
        load_heldout(cfg)
    with pytest.raises(EvaluationError, match="no batch version"):
        load_heldout(make_config(tmp_path / "empty"))


def test_full_ranks_count_ties_against_and_rank_masked_last() -> None:
    import numpy as np

    from pipeline.metrics import full_ranks, hr_ndcg

    s = np.array([[3.0, 1.0, 1.0, -np.inf], [0.5, 2.0, 1.0, 4.0]])
    ranks = full_ranks(s, np.array([1, 3]))
    assert ranks.tolist() == [3, 1]                       # a tie with another movie counts against the target
    assert full_ranks(s, np.array([3, 0])).tolist() == [4, 4]  # a masked target ranks with the whole row
    hr, ndcg = hr_ndcg(ranks, np.array([True, False]), k=3)
    assert hr.tolist() == [1.0, 0.0] and ndcg[0] == 0.5      # an invalid row is a miss

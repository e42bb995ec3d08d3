"""Protocol P2 (random 90/10 rating split): the split, leak-free histories, and the
rating-error evaluation through the exported model (real Spark, real TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recsys import cli
from pipeline.home import Home, table_path
from tests.conftest import make_config
from tests.test_model_cli import TINY

pytestmark = [pytest.mark.spark, pytest.mark.tf]


@pytest.fixture(scope="module")
def p2_batch(spark, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    from spark_jobs.batch import run_batch

    cfg = make_config(tmp_path_factory.mktemp("p2-home"), data={"split": "p2"})
    return {"cfg": cfg, "manifest": run_batch(cfg, small_data, steps=["ingest", "prepare", "features", "recall", "samples"])}


def test_p2_split_is_random_and_seeded(p2_batch: dict) -> None:
    home, v = Home(p2_batch["cfg"].home), p2_batch["manifest"]["version"]
    inter = pd.read_parquet(table_path(home, v, "interactions"))
    share = inter["split"].value_counts(normalize=True)
    assert 0.07 < share["test"] < 0.13 and 0.03 < share["val"] < 0.08
    # spread through time, not the last events: most users have a test rating before their last rating
    last_pos = inter.groupby("user_id")["pos"].transform("max")
    assert (inter[inter["split"] == "test"]["pos"] < last_pos[inter["split"] == "test"]).mean() > 0.8


def test_p2_histories_never_contain_test_ratings(p2_batch: dict) -> None:
    home, v = Home(p2_batch["cfg"].home), p2_batch["manifest"]["version"]
    ex = pd.read_parquet(table_path(home, v, "examples"))
    inter = pd.read_parquet(table_path(home, v, "interactions"))
    for user_id in inter["user_id"].unique()[:25]:
        seq = inter[inter["user_id"] == user_id].sort_values("pos")
        visible = seq[seq["split"] != "test"]
        for row in ex[ex["user_id"] == user_id].itertuples():
            before = visible[visible["pos"] < row.pos]["movie_id"].tolist()
            assert list(row.hist_movies) == before[-p2_batch["cfg"].samples.history_len:]
            assert row.n_before == len(before)


def test_p2_rating_evaluation(p2_batch: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in TINY.items():
        monkeypatch.setenv(k, v)
    home = Home(p2_batch["cfg"].home)
    home.set_current_version(p2_batch["manifest"]["version"])  # samples done; no Redis publish needed here
    h = str(home.root)
    assert cli.main(["--home", h, "train", "--epochs", "2"]) == 0
    assert cli.main(["--home", h, "export"]) == 0
    out = tmp_path / "p2.json"
    assert cli.main(["--home", h, "evaluate", "--stage", "model", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["info"]["protocol"] == "P2"
    rows = {r["model"]: r["metrics"] for r in report["rows"]}
    model = next(v for k, v in rows.items() if k.startswith("ranker (export"))
    bias = rows["baseline:bias (global + user + movie)"]
    assert 0.3 < model["RMSE"] < 1.6 and 0.3 < bias["RMSE"] < 1.6
    assert model["MAE"] <= model["RMSE"]

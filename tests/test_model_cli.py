"""`recsys train`, `export`, `evaluate --stage model` and `explain` end to end on a real P1
build (tiny model sizes; real TensorFlow, real SavedModel, real evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys import cli

pytestmark = [pytest.mark.spark, pytest.mark.tf]

TINY = {"RECSYS_MODEL_EMBEDDING_DIM": "16", "RECSYS_MODEL_HIDDEN": "32", "RECSYS_MODEL_BATCH_SIZE": "256",
        "RECSYS_MODEL_RESIDUAL_BLOCKS": "1", "RECSYS_MODEL_SEQUENCE_EPOCHS": "3", "RECSYS_MODEL_SEQUENCE_DIM": "16",
        "RECSYS_MODEL_SEQUENCE_BATCH_SIZE": "256", "RECSYS_MODEL_MIX_USERS": "100"}


@pytest.fixture
def env(p1_batch: dict, redis_srv, monkeypatch: pytest.MonkeyPatch) -> dict:  # noqa: ANN001
    for k, v in TINY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RECSYS_REDIS_URL", redis_srv.url)
    return p1_batch


def test_train_export_evaluate_explain(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home = str(env["cfg"].home)
    assert cli.main(["--home", home, "train", "--epochs", "2", "--run", "cli-full"]) == 0
    assert cli.main(["--home", home, "train", "--epochs", "1", "--ablate", "history", "--run", "cli-mlp"]) == 0
    assert "cli-mlp" in capsys.readouterr().out
    assert cli.main(["--home", home, "export", "--run", "cli-full"]) == 0
    assert "TF Serving layout" in capsys.readouterr().out

    report_path = tmp_path / "model.json"
    assert cli.main(["--home", home, "evaluate", "--stage", "model", "--runs", "cli-mlp", "--cold",
                     "--max-users", "60", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    models = [r["model"] for r in report["rows"]]
    assert any(m.startswith("ranker (export v") for m in models)
    assert any(m.endswith("[cold user]") for m in models) and any(m.endswith("[cold movie]") for m in models)
    assert {"run cli-mlp", "baseline:popularity", "baseline:item-knn", "baseline:mf-als"} <= set(models)
    unbounded = {"RMSE", "MAE", "train seconds"}  # the rest are rates in [0, 1]
    for row in report["rows"]:
        for name, value in row["metrics"].items():
            assert value >= 0 and (name in unbounded or value <= 1), (row["model"], name, value)
    full = next(r for r in report["rows"] if r["model"].startswith("ranker (export") and "[" not in r["model"])
    assert full["metrics"]["RMSE"] < 2.0
    assert "train seconds" in full["metrics"]  # the exported run's training time is a column of the table
    assert report["info"]["users"] == 60

    png = tmp_path / "explain.png"
    import pandas as pd

    from pipeline.home import Home, table_path

    uf = pd.read_parquet(table_path(Home(env["cfg"].home), env["version"], "user_features"))
    user = int(uf.sort_values("n_ratings").iloc[-1]["user_id"])
    movies = pd.read_parquet(table_path(Home(env["cfg"].home), env["version"], "movie_features"))["movie_id"].head(3)
    assert cli.main(["--home", home, "explain", "--user", str(user), "--movie", ",".join(map(str, movies)),
                     "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "because you watched" in text and png.stat().st_size > 1000
    from PIL import Image

    assert Image.open(png).size[0] > 300


def test_unknown_ablation_named(env: dict, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--home", str(env["cfg"].home), "train", "--ablate", "magic"]) == 2
    assert "magic" in capsys.readouterr().err


def test_explain_unknown_user(env: dict, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--home", str(env["cfg"].home), "explain", "--user", "999999", "--movie", "1"]) == 2
    err = capsys.readouterr().err
    assert "999999" in err or "export" in err

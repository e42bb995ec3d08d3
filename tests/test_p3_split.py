"""The P3 split of the prepare job: the latest share of the timeline is held back for replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_config

pytestmark = pytest.mark.spark


def test_p3_holds_back_the_latest_events(spark, tmp_path: Path) -> None:  # noqa: ANN001
    from spark_jobs.prepare import build_interactions

    rows = []
    for user in range(1, 5):                     # 4 users x 10 ratings, timestamps interleaved 0..39
        for i in range(10):
            rows.append((user, 100 + i, 4.0, i * 4 + user, i))
    ratings = spark.createDataFrame(rows, "user_id int, movie_id int, rating float, ts long, line long")
    cfg = make_config(tmp_path, data={"split": "p3", "p3_replay_fraction": 0.25, "min_movie_ratings": 1,
                                      "min_user_ratings": 1})
    out = build_interactions(ratings, cfg).toPandas()
    test = out[out["split"] == "test"]
    assert abs(len(test) - 10) <= 1                         # the latest quarter of 40 events (quantile rank rounding)
    assert out[out["split"] != "test"]["ts"].max() < test["ts"].min()   # a clean cut in time
    val = out[out["split"] == "val"].set_index("user_id")
    before = out[out["split"] != "test"].groupby("user_id")["ts"].max()
    assert (val["ts"] == before.loc[val.index]).all() and len(val) == 4   # each user's last event before the cutoff

"""The Spark ingest job on fixtures of every official layout: the same typed rows as the
plain-Python loader, latin-1 titles intact, malformed rows named by file and line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline import movielens as ml
from spark_jobs.ingest import ingest_table
from tests.conftest import make_config
from tests.movielens_fixtures import *  # noqa: F401,F403 - ml100k, ml1m, latest fixtures
from tests.movielens_fixtures import ML1M_MOVIES, records, write

pytestmark = pytest.mark.spark


@pytest.mark.parametrize("fixture", ["ml100k", "ml1m", "latest"])
def test_spark_ingest_equals_python_loader(spark, request: pytest.FixtureRequest, fixture: str) -> None:  # noqa: ANN001
    root: Path = request.getfixturevalue(fixture)
    layout = ml.detect_layout(root)
    for table in layout.tables:
        src = layout.source(table)
        df, parsed, n_bad = ingest_table(spark, src, "fail")
        got = df.toPandas()
        parsed.unpersist()
        want, _ = ml.read_table(layout, table)
        key = list(want.columns[:2])
        got = got.sort_values(key).reset_index(drop=True)[list(want.columns)]
        want = want.sort_values(key).reset_index(drop=True)
        assert n_bad == 0
        g, w = records(got), records(want)
        assert _norm(g) == _norm(w), f"{fixture}/{table}"


def _norm(rows: list[tuple]) -> list[tuple]:
    """Arrays as lists and NaN as None: toPandas gives float NaN for a null int column."""
    def one(v):  # noqa: ANN001, ANN202
        if isinstance(v, float) and v != v:
            return None
        return list(v) if hasattr(v, "tolist") and not isinstance(v, str) else v
    return [tuple(one(v) for v in r) for r in rows]


def test_latin1_titles_survive_spark(spark, ml1m: Path) -> None:  # noqa: ANN001
    src = ml.detect_layout(ml1m).source("movies")
    df, parsed, _ = ingest_table(spark, src, "fail")
    titles = set(df.toPandas()["title"])
    assert "Misérables, Les (1995)" in titles and "Café au Lait (1993)" in titles


def test_bad_row_named_with_file_and_line(spark, tmp_path: Path) -> None:  # noqa: ANN001
    root = write(tmp_path / "bad", {"ratings.dat": "1::1193::5::978300760\n1::661::9::978302109\n2::1::x::1\n",
                                    "movies.dat": ML1M_MOVIES, "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n"},
                 "latin-1")
    src = ml.detect_layout(root).source("ratings")
    with pytest.raises(ml.BadRowError) as err:
        ingest_table(spark, src, "fail")
    assert err.value.line == 2
    assert str(err.value).startswith("ratings.dat line 2: ")
    assert "1 more malformed rows" in str(err.value)
    df, parsed, n_bad = ingest_table(spark, src, "skip")
    assert n_bad == 2 and df.count() == 1


def test_failed_batch_keeps_previous_version(spark, tmp_path: Path, ml1m: Path) -> None:  # noqa: ANN001
    """A run that fails (here: a malformed row) leaves CURRENT and the old tables untouched."""
    from pipeline.home import Home
    from spark_jobs.batch import run_batch

    cfg = make_config(tmp_path / "home")
    home = Home(cfg.home)
    home.versions.mkdir(parents=True)
    home.set_current_version("v20000101T000000000Z")
    bad = write(tmp_path / "bad", {"ratings.dat": "1::1193::5::978300760\n1::661::9::978302109\n",
                                   "movies.dat": ML1M_MOVIES, "users.dat": "1::F::1::10::48067\n"}, "latin-1")
    with pytest.raises(ml.BadRowError):
        run_batch(cfg, bad)
    assert home.current_version() == "v20000101T000000000Z"
    failed = [d for d in home.versions.iterdir() if d.is_dir()]
    assert len(failed) == 1 and home.read_manifest(failed[0].name)["status"] == "failed"
    assert "ratings.dat line 2" in home.read_manifest(failed[0].name)["error"]
    assert not any(p.name.startswith(".") for p in failed[0].iterdir())  # no half-written table left

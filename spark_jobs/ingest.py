"""Ingest: MovieLens files (any official layout) -> typed parquet tables.

Lines are read by Spark as raw bytes with their line numbers (``textFile`` +
``zipWithIndex``), so latin-1 files decode correctly and a malformed row is reported
with its file and line even on a cluster; parsing is ``pipeline.movielens.parse_lines``,
the same pure function the plain-Python loader uses.

Run alone::

    spark-submit spark_jobs/main.py ingest --home var --data path/to/ml-1m
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import movielens as ml
from pipeline.config import Config
from pipeline.home import Home, table_path
from pipeline.schemas import TABLES
from spark_jobs.session import write_table


def _spark_schema(table: str):  # noqa: ANN202
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(TABLES[table])


def _numbered_lines(data: bytes):  # noqa: ANN202
    """(line bytes, 0-based index) pairs of a whole file, as zipWithIndex would give them."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [(line, i) for i, line in enumerate(lines)]


def ingest_table(spark, src: "ml.Source", on_bad_rows: str):  # noqa: ANN001, ANN201
    """Parse one source file into a DataFrame; returns (df, skipped_bad_rows)."""
    sc = spark.sparkContext
    if src.encoding.replace("_", "-").lower() in ("latin-1", "latin1", "iso-8859-1"):
        # Hadoop's TextInputFormat hands lines over as JVM Strings decoded as UTF-8, which
        # turns latin-1 bytes into U+FFFD. The latin-1 layouts (ML-100K, ML-1M) are small
        # fixed-size releases, so their bytes are read whole and split into lines here.
        lines = (sc.binaryFiles(str(src.path)).flatMap(lambda kv: _numbered_lines(kv[1]))
                 .repartition(max(1, sc.defaultParallelism)))
    else:
        lines = sc.textFile(str(src.path), use_unicode=False).zipWithIndex()
    parsed = lines.mapPartitions(lambda it, src=src: ml.parse_lines(src, it)).cache()
    bad = parsed.filter(lambda rec: rec[0] == "bad")
    n_bad = bad.count()
    if n_bad and on_bad_rows == "fail":
        first = bad.takeOrdered(1, key=lambda rec: rec[1])[0]
        parsed.unpersist()
        err = ml.BadRowError.from_record(src, first)
        if n_bad > 1:
            err.args = (f"{err.args[0]} (and {n_bad - 1} more malformed rows; --on-bad-rows skip drops them)",)
        raise err
    rows = parsed.filter(lambda rec: rec[0] == "ok").map(lambda rec: rec[1])
    df = spark.createDataFrame(rows, schema=_spark_schema(src.table))
    return df, parsed, n_bad


def run(spark, cfg: Config, version: str, data_dir: Path) -> dict[str, Any]:  # noqa: ANN001
    """Write ratings, movies, users and tags of ``data_dir`` into batch ``version``."""
    home = Home(cfg.home)
    layout = ml.detect_layout(Path(data_dir))
    summary: dict[str, Any] = {"layout": layout.name, "data": str(Path(data_dir).absolute()), "tables": {}}
    for table in ("ratings", "movies", "users", "tags"):
        src = layout.source(table)
        if src is None:
            df = spark.createDataFrame([], schema=_spark_schema(table))
            parsed, n_bad = None, 0
        else:
            df, parsed, n_bad = ingest_table(spark, src, cfg.data.on_bad_rows)
        out = table_path(home, version, table)
        write_table(df, out, partitions=None if table == "ratings" else 1)
        rows = spark.read.parquet(str(out)).count()
        if parsed is not None:
            parsed.unpersist()
        summary["tables"][table] = {"rows": rows, "skipped_bad_rows": n_bad,
                                    "source": str(src.path) if src else None}
    if summary["tables"]["ratings"]["rows"] == 0:
        raise ml.DatasetError(f"{data_dir}: no ratings could be read")
    return summary

"""Prepare: the interaction table every later step reads (docs/evaluation.md data preparation).

Every rating is an interaction. One pass of 5-core filtering (movies first, then
users), each user's sequence ordered by time with file order breaking ties, and a
``split`` column:

* ``data.split = "p1"``: last interaction ``test``, second-to-last ``val``, the rest
  ``train`` (leave-one-out). Features and recall fit on ``train``; a user's history at
  request time is ``train + val``.
* ``data.split = "p2"``: a seeded random 10% of ratings ``test`` and 5% ``val``
  (the rating-prediction split); fitting as under P1.
* ``data.split = "p3"``: every event at or after the timestamp at the 90th percentile
  is ``test`` (replayed through the gateway by ``recsys evaluate --protocol p3``); before
  it, each user's last event is ``val`` and the rest ``train``.
* ``data.split = "none"`` (serving): last interaction ``val`` (early stopping of the
  ranking model only), the rest ``train``; everything is fitted and served.

``fit_rows`` and ``history_rows`` are the one place that says which rows each use sees.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.home import Home, table_path
from spark_jobs.session import read_table, write_table


def fit_rows(interactions, split_mode: str):  # noqa: ANN001, ANN201
    """Rows that models and statistics are fitted on."""
    from pyspark.sql import functions as F

    return interactions if split_mode == "none" else interactions.where(F.col("split") == "train")


def history_rows(interactions, split_mode: str):  # noqa: ANN001, ANN201
    """Rows that make up a user's visible history (what serving knows)."""
    from pyspark.sql import functions as F

    return interactions if split_mode == "none" else interactions.where(F.col("split") != "test")


def build_interactions(ratings, cfg: Config):  # noqa: ANN001, ANN201
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    movie_counts = ratings.groupBy("movie_id").count()
    kept_movies = movie_counts.where(F.col("count") >= cfg.data.min_movie_ratings).select("movie_id")
    r = ratings.join(kept_movies, "movie_id")
    user_counts = r.groupBy("user_id").count()
    kept_users = user_counts.where(F.col("count") >= max(cfg.data.min_user_ratings, 3 if cfg.data.split != "none" else 2))
    r = r.join(kept_users.select("user_id", F.col("count").alias("n")), "user_id")
    order = Window.partitionBy("user_id").orderBy("ts", "line")
    r = r.withColumn("pos", (F.row_number().over(order) - 1).cast("int"))
    from_end = F.col("n") - 1 - F.col("pos")
    if cfg.data.split == "p1":
        split = F.when(from_end == 0, "test").when(from_end == 1, "val").otherwise("train")
    elif cfg.data.split == "p2":
        # A seeded, order-independent uniform draw per rating: the same rows on every machine and rerun.
        u = (F.abs(F.xxhash64("user_id", "movie_id", "ts", F.lit(cfg.samples.seed))) % 1_000_000) / 1_000_000.0
        split = (F.when(u < cfg.data.p2_test_fraction, "test")
                 .when(u < cfg.data.p2_test_fraction + cfg.data.p2_val_fraction, "val").otherwise("train"))
    elif cfg.data.split == "p3":
        # Streaming replay (docs/evaluation.md P3): events from the timestamp at the 90th percentile on are
        # replayed live; before it, each user's last event validates and the rest trains.
        cutoff = r.approxQuantile("ts", [1.0 - cfg.data.p3_replay_fraction], 0.0)[0]
        last_before = F.max(F.when(F.col("ts") < F.lit(cutoff), F.col("pos"))).over(Window.partitionBy("user_id"))
        split = (F.when(F.col("ts") >= F.lit(cutoff), "test").when(F.col("pos") == last_before, "val")
                 .otherwise("train"))
    else:
        split = F.when(from_end == 0, "val").otherwise("train")
    return r.withColumn("split", split).select("user_id", "movie_id", "rating", "ts", "line", "pos",
                                               F.col("n").cast("int").alias("n"), "split")


def run(spark, cfg: Config, version: str) -> dict[str, Any]:  # noqa: ANN001
    home = Home(cfg.home)
    ratings = read_table(spark, table_path(home, version, "ratings"))
    out = table_path(home, version, "interactions")
    write_table(build_interactions(ratings, cfg).repartition("user_id"), out)
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(out))
    stats = df.agg(F.count("*").alias("rows"), F.countDistinct("user_id").alias("users"),
                   F.countDistinct("movie_id").alias("movies")).first().asDict()
    by_split = {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}
    return {**stats, "split_mode": cfg.data.split, "rows_by_split": by_split,
            "dropped_ratings": read_table(spark, table_path(home, version, "ratings")).count() - stats["rows"]}

"""Samples: training examples for the ranking model, the held-out table and vocabularies.

Examples come from ``pipeline.examples.user_examples`` run per user
(``groupBy(user).applyInPandas``). Under ``data.split = "p1"`` they carry the
train / val / test label of docs/evaluation.md P1; under ``"none"`` (serving) the last
event of each user is ``val`` (early stopping only) and everything else ``train``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.examples import EXAMPLES_SCHEMA, user_examples
from pipeline.home import Home, atomic_write_text, table_path
from pipeline.schemas import AGE_BUCKETS, GENRES, OCCUPATIONS
from spark_jobs.session import read_table, write_table


def examples_df(interactions, movie_features, cfg: Config):  # noqa: ANN001, ANN201
    from pyspark.sql import functions as F

    catalog = movie_features.where(F.col("in_catalog")).select("movie_id", "n_ratings").toPandas()
    universe = catalog["movie_id"].to_numpy(np.int32)
    probs = None
    if cfg.samples.negative_sampling == "popularity":
        probs = catalog["n_ratings"].to_numpy(np.float64) ** 0.75
    sc = cfg.samples

    def per_user(pdf):  # noqa: ANN001, ANN202
        return user_examples(pdf, universe, probs, sc.history_len, sc.negatives, sc.seed)

    cols = interactions.select("user_id", "movie_id", "rating", "ts", "line", "split")
    return cols.groupBy("user_id").applyInPandas(per_user, schema=EXAMPLES_SCHEMA)


def heldout_df(interactions):  # noqa: ANN001, ANN201
    """One row per user: the validation and (under P1) test interaction."""
    from pyspark.sql import functions as F

    pick = lambda split, col: F.max(F.when(F.col("split") == split, F.col(col)))  # noqa: E731
    return interactions.groupBy("user_id").agg(
        pick("val", "movie_id").alias("val_movie"), pick("val", "rating").alias("val_rating"),
        pick("val", "ts").alias("val_ts"), pick("test", "movie_id").alias("test_movie"),
        pick("test", "rating").alias("test_rating"), pick("test", "ts").alias("test_ts"))


def vocabularies(interactions, movie_features, users, cfg: Config) -> dict[str, Any]:  # noqa: ANN001
    """Everything the model needs to map raw values to indices (index 0 is reserved for 'unknown')."""
    from pyspark.sql import functions as F

    mf = movie_features.select("movie_id", "n_ratings", "decade", "title_tokens", "in_catalog").toPandas()
    mf = mf.sort_values(["n_ratings", "movie_id"], ascending=[False, True])
    token_counts = Counter(t for toks in mf["title_tokens"] for t in (toks if toks is not None else []))
    user_ids = sorted(int(r[0]) for r in interactions.select("user_id").distinct().collect())
    occupations = sorted({o for o in users.select("occupation").distinct().toPandas()["occupation"] if o} | set(OCCUPATIONS))
    return {
        "movie_id": [int(m) for m in mf["movie_id"]],
        "user_id": user_ids,
        "genre": list(GENRES),
        "age_bucket": sorted(AGE_BUCKETS),
        "gender": ["F", "M"],
        "occupation": occupations,
        "decade": sorted({int(d) for d in mf["decade"].dropna()}),
        "title_token": [t for t, c in sorted(token_counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2],
        "split": cfg.data.split,
        "history_len": cfg.samples.history_len,
    }


def run(spark, cfg: Config, version: str) -> dict[str, Any]:  # noqa: ANN001
    from pyspark.sql import functions as F

    home = Home(cfg.home)
    interactions = read_table(spark, table_path(home, version, "interactions"))
    movie_features = read_table(spark, table_path(home, version, "movie_features"))
    users = read_table(spark, table_path(home, version, "users"))
    out = table_path(home, version, "examples")
    write_table(examples_df(interactions, movie_features, cfg), out)
    write_table(heldout_df(interactions), table_path(home, version, "heldout"), partitions=1)
    vocab = vocabularies(interactions, movie_features, users, cfg)
    atomic_write_text(table_path(home, version, "vocab.json"), json.dumps(vocab))
    counts = {r["split"]: r["count"] for r in spark.read.parquet(str(out)).groupBy("split").count().collect()}
    return {"examples_by_split": counts, "negatives_per_example": cfg.samples.negatives,
            "history_len": cfg.samples.history_len, "vocab_sizes": {k: len(v) for k, v in vocab.items() if isinstance(v, list)},
            "users": spark.read.parquet(str(table_path(home, version, "heldout"))).where(F.col("val_movie").isNotNull()).count()}

"""Features: the user and movie feature tables.

User features are ``pipeline.features.UserState`` folded over the user's visible
history in time order (``groupBy(user).applyInPandas``): the very code the stream job
runs per event, so online and offline values agree. Movie statistics are Spark
aggregates over the fitted rows; movie attributes (decade, title tokens) use the
shared pure functions.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from pipeline import features as feat
from pipeline.config import Config
from pipeline.home import Home, table_path
from spark_jobs.prepare import fit_rows, history_rows
from spark_jobs.session import read_table, write_table

USER_FEATURES_SCHEMA = ("user_id int, n_ratings int, mean_rating double, std_rating double, first_ts long, "
                        "last_ts long, genre_affinity string, top_genres array<string>, history string, seen array<int>")


def movie_genres(movies) -> dict[int, list[str]]:  # noqa: ANN001
    """movie_id -> genres, collected to the driver (movies are few) to ship with the fold."""
    return {int(r["movie_id"]): list(r["genres"] or []) for r in movies.select("movie_id", "genres").collect()}


def user_fold_fn(genres_of: dict[int, list[str]], half_life_days: float, history_len: int):  # noqa: ANN201
    """The per-user pandas function: events (any order) -> one row of features."""

    def fold(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(["ts", "line"], kind="mergesort")
        events = zip(pdf["movie_id"].tolist(), pdf["rating"].tolist(), pdf["ts"].tolist())
        state = feat.fold_user(events, genres_of, half_life_days, history_len)
        f = state.to_features()
        return pd.DataFrame([{
            "user_id": int(pdf["user_id"].iloc[0]), "n_ratings": f["n_ratings"], "mean_rating": f["mean_rating"],
            "std_rating": f["std_rating"], "first_ts": f["first_ts"], "last_ts": f["last_ts"],
            "genre_affinity": json.dumps(f["genre_affinity"], separators=(",", ":")),
            "top_genres": f["top_genres"],
            "history": json.dumps([[m, r, t] for m, r, t in state.history], separators=(",", ":")),
            "seen": sorted(set(int(m) for m in pdf["movie_id"])),
        }])

    return fold


def build_user_features(interactions, users, genres_of, cfg: Config):  # noqa: ANN001, ANN201
    hist = history_rows(interactions, cfg.data.split).select("user_id", "movie_id", "rating", "ts", "line")
    fold = user_fold_fn(genres_of, cfg.features.genre_half_life_days, cfg.features.history_len)
    feats = hist.groupBy("user_id").applyInPandas(fold, schema=USER_FEATURES_SCHEMA)
    demo = users.select("user_id", "gender", "age", "age_bucket", "occupation", "zip")
    return feats.join(demo, "user_id", "left")


def build_movie_features(interactions, movies, cfg: Config):  # noqa: ANN001, ANN201
    from pyspark.sql import functions as F

    fit = fit_rows(interactions, cfg.data.split)
    global_mean = fit.agg(F.avg("rating")).first()[0] or 0.0
    stats = fit.groupBy("movie_id").agg(
        F.count("*").cast("int").alias("n_ratings"), F.avg("rating").alias("mean_rating"),
        F.coalesce(F.stddev_pop("rating"), F.lit(0.0)).alias("std_rating"), F.max("ts").alias("last_ts"))
    prior = float(cfg.recall.toprated_min_count)
    stats = stats.withColumn(
        "bayes_rating", (F.col("mean_rating") * F.col("n_ratings") + F.lit(global_mean * prior)) / (F.col("n_ratings") + F.lit(prior)))
    stats = stats.withColumn("popularity", F.log1p("n_ratings"))
    # Only movies that survived filtering are recommendable; the rest keep attributes for display.
    in_catalog = interactions.select("movie_id").distinct().withColumn("in_catalog", F.lit(True))
    pdf = movies.join(stats, "movie_id", "left").join(in_catalog, "movie_id", "left").toPandas()
    pdf["in_catalog"] = pdf["in_catalog"].eq(True)
    pdf["n_ratings"] = pdf["n_ratings"].fillna(0).astype("int32")
    for col in ("mean_rating", "std_rating", "bayes_rating", "popularity"):
        pdf[col] = pdf[col].astype("float64")
    pdf["decade"] = [feat.decade(None if pd.isna(y) else int(y)) for y in pdf["year"]]
    pdf["decade"] = pdf["decade"].astype("Int32")
    pdf["title_tokens"] = [feat.title_tokens(t, cfg.features.title_max_tokens) for t in pdf["title"]]
    pdf["genres"] = [list(g) if g is not None else [] for g in pdf["genres"]]
    return pdf.sort_values("movie_id").reset_index(drop=True), float(global_mean)


def run(spark, cfg: Config, version: str) -> dict[str, Any]:  # noqa: ANN001
    home = Home(cfg.home)
    interactions = read_table(spark, table_path(home, version, "interactions"))
    movies = read_table(spark, table_path(home, version, "movies"))
    users = read_table(spark, table_path(home, version, "users"))
    genres_of = movie_genres(movies)
    user_out = table_path(home, version, "user_features")
    write_table(build_user_features(interactions, users, genres_of, cfg), user_out)
    movie_pdf, global_mean = build_movie_features(interactions, movies, cfg)
    write_table(spark.createDataFrame(movie_pdf), table_path(home, version, "movie_features"), partitions=1)
    n_users = spark.read.parquet(str(user_out)).count()
    return {"users": n_users, "movies": int(len(movie_pdf)), "movies_in_catalog": int(movie_pdf["in_catalog"].sum()),
            "global_mean_rating": round(global_mean, 4)}

"""Recall: the candidate lists the gateway merges (see pipeline.recall for the channels).

* ``recall_als``: ALS (pyspark.ml) top-N unseen movies per user. Scoring runs on the
  executors: item factors are broadcast and each partition of users is scored with
  one matrix product, seen movies masked, top-N taken with argpartition.
* ``recall_similar``: per movie, the most similar movies by cosine of ALS item factors,
  averaged with item2vec (Spark Word2Vec over user sequences) when enabled.
* ``recall_next``: per movie, what users rated within the next few ratings after it
  (weights 1, 1/2, 1/3, ...), normalised per source movie: P(next | this).
* ``recall_lists``: popular and top-rated overall, per genre, and popular per
  demographic (age bucket x gender, each alone too).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from pipeline import keys as K
from pipeline.config import Config
from pipeline.home import Home, table_path
from spark_jobs.prepare import fit_rows, history_rows
from spark_jobs.session import read_table, write_table

LIST_SCHEMA = "items array<int>, scores array<float>"


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices and values of the k largest scores, best first."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64), np.zeros((scores.shape[0], 0), dtype=scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def fit_als(fit, cfg: Config):  # noqa: ANN001, ANN201
    from pyspark.ml.recommendation import ALS

    rc = cfg.recall
    als = ALS(userCol="user_id", itemCol="movie_id", ratingCol="rating", rank=rc.als_rank, maxIter=rc.als_iters,
              regParam=rc.als_reg, implicitPrefs=rc.als_implicit, alpha=rc.als_alpha, coldStartStrategy="drop",
              nonnegative=False, seed=cfg.samples.seed, intermediateStorageLevel="MEMORY_AND_DISK",
              finalStorageLevel="MEMORY_AND_DISK")
    data = fit.select("user_id", "movie_id", "rating")
    if rc.als_implicit:
        from pyspark.sql import functions as F

        data = data.withColumn("rating", F.lit(1.0))  # every rating is an interaction (docs/evaluation.md)
    return als.fit(data)


def factors_matrix(df) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(ids, matrix) of an ALS factor DataFrame, ordered by id."""
    pdf = df.toPandas().sort_values("id")
    return pdf["id"].to_numpy(np.int64), np.asarray(pdf["features"].tolist(), dtype=np.float32).reshape(len(pdf), -1)


def als_user_lists(spark, model, history, top_n: int):  # noqa: ANN001, ANN201
    """Top-N unseen movies per user from ALS factors, scored on the executors."""
    from pyspark.sql import functions as F

    item_ids, item_mat = factors_matrix(model.itemFactors)
    b_ids = spark.sparkContext.broadcast(item_ids)
    b_mat = spark.sparkContext.broadcast(item_mat)
    seen = history.groupBy("user_id").agg(F.collect_set("movie_id").alias("seen"))
    users = model.userFactors.withColumnRenamed("id", "user_id").join(seen, "user_id", "left")

    def score(batches: Iterator) -> Iterator:  # noqa: ANN001
        import pandas as pd

        ids, mat = b_ids.value, b_mat.value
        pos = {int(m): i for i, m in enumerate(ids)}
        for pdf in batches:
            if pdf.empty:
                continue
            u = np.asarray(pdf["features"].tolist(), dtype=np.float32)
            s = u @ mat.T
            for row, seen_items in enumerate(pdf["seen"]):
                if seen_items is not None:
                    idx = [pos[m] for m in seen_items if m in pos]
                    s[row, idx] = -np.inf
            top, vals = top_k_rows(s, top_n)
            items, scores = [], []
            for r in range(len(pdf)):
                ok = np.isfinite(vals[r])
                items.append(ids[top[r][ok]].astype(np.int32).tolist())
                scores.append(vals[r][ok].astype(np.float32).tolist())
            yield pd.DataFrame({"user_id": pdf["user_id"].astype("int32"), "items": items, "scores": scores})

    return users.mapInPandas(score, schema="user_id int, " + LIST_SCHEMA)


def cosine_top_k(ids: np.ndarray, mat: np.ndarray, k: int, chunk: int = 2048) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per row of ``mat``, its k most cosine-similar other rows (chunked: memory stays small)."""
    norm = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-9)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(ids), chunk):
        sims = norm[start:start + chunk] @ norm.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        top, vals = top_k_rows(sims, k)
        for r in range(sims.shape[0]):
            out[int(ids[start + r])] = (ids[top[r]], vals[r])
    return out


def item2vec_vectors(history, cfg: Config) -> tuple[np.ndarray, np.ndarray] | None:  # noqa: ANN001
    """Spark Word2Vec over each user's time-ordered sequence of movie ids."""
    from pyspark.ml.feature import Word2Vec
    from pyspark.sql import functions as F

    seqs = (history.groupBy("user_id")
            .agg(F.sort_array(F.collect_list(F.struct("ts", "line", "movie_id"))).alias("ev"))
            .select(F.transform("ev", lambda e: e["movie_id"].cast("string")).alias("seq")))
    w2v = Word2Vec(vectorSize=cfg.recall.item2vec_dim, windowSize=5, minCount=1, maxIter=1, numPartitions=1,
                   seed=cfg.samples.seed, inputCol="seq", outputCol="vec", maxSentenceLength=1000)
    model = w2v.fit(seqs)
    pdf = model.getVectors().toPandas()
    if pdf.empty:
        return None
    ids = pdf["word"].astype(np.int64).to_numpy()
    mat = np.asarray([v.toArray() for v in pdf["vector"]], dtype=np.float32)
    order = np.argsort(ids)
    return ids[order], mat[order]


def similar_lists(item_ids: np.ndarray, item_mat: np.ndarray, w2v: tuple[np.ndarray, np.ndarray] | None,
                  k: int) -> list[tuple[int, list[int], list[float]]]:
    """Cosine neighbours of item factors, blended 50/50 with item2vec neighbours when present."""
    als_nn = cosine_top_k(item_ids, item_mat, k * 2)
    w2v_nn = cosine_top_k(w2v[0], w2v[1], k * 2) if w2v is not None else {}
    rows = []
    for movie_id in item_ids:
        m = int(movie_id)
        blended: dict[int, float] = {}
        sources = [als_nn.get(m)] + ([w2v_nn.get(m)] if w2v_nn else [])
        weight = 1.0 / len(sources)
        for src in sources:
            if src is None:
                continue
            for other, sim in zip(src[0].tolist(), src[1].tolist()):
                blended[int(other)] = blended.get(int(other), 0.0) + weight * max(float(sim), 0.0)
        top = sorted(blended.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        rows.append((m, [t[0] for t in top], [float(t[1]) for t in top]))
    return rows


def next_lists(fit, cfg: Config):  # noqa: ANN001, ANN201
    """Per movie, the movies rated within the next ``sequential_window`` ratings, P(next | movie)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("user_id").orderBy("ts", "line")
    base = fit.select("user_id", "movie_id", "ts", "line")
    pairs = None
    for gap in range(1, cfg.recall.sequential_window + 1):
        step = (base.withColumn("next_id", F.lead("movie_id", gap).over(w))
                .where(F.col("next_id").isNotNull() & (F.col("next_id") != F.col("movie_id")))
                .select("movie_id", "next_id", F.lit(1.0 / gap).alias("w")))
        pairs = step if pairs is None else pairs.unionByName(step)
    agg = pairs.groupBy("movie_id", "next_id").agg(F.sum("w").alias("w"))
    total = agg.groupBy("movie_id").agg(F.sum("w").alias("total"))
    scored = agg.join(total, "movie_id").withColumn("p", F.col("w") / F.col("total"))
    rank = Window.partitionBy("movie_id").orderBy(F.desc("p"), "next_id")
    top = scored.withColumn("r", F.row_number().over(rank)).where(F.col("r") <= cfg.recall.sequential_k)
    return (top.groupBy("movie_id")
            .agg(F.sort_array(F.collect_list(F.struct("r", "next_id", "p"))).alias("l"))
            .select(F.col("movie_id").cast("int"), F.transform("l", lambda e: e["next_id"].cast("int")).alias("items"),
                    F.transform("l", lambda e: e["p"].cast("float")).alias("scores")))


def global_lists(fit, movie_features, users, cfg: Config):  # noqa: ANN001, ANN201
    """Popular / top-rated lists as rows (name, items, scores)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = cfg.recall.popular_n
    mf = movie_features.select("movie_id", "genres", "bayes_rating", "n_ratings")
    counts = fit.groupBy("movie_id").agg(F.count("*").cast("float").alias("score"))
    with_genre = counts.join(mf.select("movie_id", F.explode("genres").alias("genre")), "movie_id")
    demo = fit.join(users.select("user_id", "age_bucket", "gender"), "user_id", "left")
    age = F.coalesce(F.col("age_bucket").cast("string"), F.lit("any"))
    gender = F.coalesce(F.col("gender"), F.lit("any"))
    demo_counts = (demo.select("movie_id", F.concat_ws(":", F.lit("popular:demo"), age, gender).alias("name"))
                   .unionByName(demo.select("movie_id", F.concat_ws(":", F.lit("popular:demo"), age, F.lit("any")).alias("name")))
                   .unionByName(demo.select("movie_id", F.concat_ws(":", F.lit("popular:demo:any"), gender).alias("name")))
                   .groupBy("name", "movie_id").agg(F.count("*").cast("float").alias("score")))
    rated = mf.where(F.col("n_ratings") >= cfg.recall.toprated_min_count).select(
        "movie_id", "genres", F.col("bayes_rating").cast("float").alias("score"))
    parts = [
        counts.select(F.lit(K.list_popular()).alias("name"), "movie_id", "score"),
        with_genre.select(F.concat(F.lit("popular:genre:"), "genre").alias("name"), "movie_id", "score"),
        demo_counts.select("name", "movie_id", "score"),
        rated.select(F.lit(K.list_toprated()).alias("name"), "movie_id", "score"),
        rated.select("movie_id", "score", F.explode("genres").alias("genre"))
             .select(F.concat(F.lit("toprated:genre:"), "genre").alias("name"), "movie_id", "score"),
    ]
    allrows = parts[0]
    for p in parts[1:]:
        allrows = allrows.unionByName(p)
    rank = Window.partitionBy("name").orderBy(F.desc("score"), "movie_id")
    top = allrows.withColumn("r", F.row_number().over(rank)).where(F.col("r") <= n)
    return (top.groupBy("name").agg(F.sort_array(F.collect_list(F.struct("r", "movie_id", "score"))).alias("l"))
            .select("name", F.transform("l", lambda e: e["movie_id"].cast("int")).alias("items"),
                    F.transform("l", lambda e: e["score"].cast("float")).alias("scores")))


def run(spark, cfg: Config, version: str) -> dict[str, Any]:  # noqa: ANN001
    home = Home(cfg.home)
    interactions = read_table(spark, table_path(home, version, "interactions"))
    fit = fit_rows(interactions, cfg.data.split).cache()
    history = history_rows(interactions, cfg.data.split)
    summary: dict[str, Any] = {}

    model = fit_als(fit, cfg)
    write_table(als_user_lists(spark, model, history, cfg.recall.als_top_n), table_path(home, version, "recall_als"))
    # The factors themselves: the matrix-factorisation baseline of `recsys evaluate` scores with them.
    write_table(model.userFactors, table_path(home, version, "als_user_factors"), partitions=1)
    write_table(model.itemFactors, table_path(home, version, "als_item_factors"), partitions=1)
    item_ids, item_mat = factors_matrix(model.itemFactors)
    w2v = item2vec_vectors(fit, cfg) if cfg.recall.item2vec else None
    sim_rows = similar_lists(item_ids, item_mat, w2v, cfg.recall.similar_k)
    sim_df = spark.createDataFrame(sim_rows, schema="movie_id int, " + LIST_SCHEMA)
    write_table(sim_df, table_path(home, version, "recall_similar"), partitions=1)
    write_table(next_lists(fit, cfg), table_path(home, version, "recall_next"))
    movie_features = read_table(spark, table_path(home, version, "movie_features"))
    users = read_table(spark, table_path(home, version, "users"))
    write_table(global_lists(fit, movie_features, users, cfg), table_path(home, version, "recall_lists"), partitions=1)
    fit.unpersist()
    for name in ("recall_als", "recall_similar", "recall_next", "recall_lists"):
        summary[name] = spark.read.parquet(str(table_path(home, version, name))).count()
    summary["als"] = {"rank": cfg.recall.als_rank, "reg": cfg.recall.als_reg, "implicit": cfg.recall.als_implicit,
                      "alpha": cfg.recall.als_alpha, "iters": cfg.recall.als_iters}
    summary["item2vec"] = w2v is not None
    return summary

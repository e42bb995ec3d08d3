"""Training examples (parquet from the batch plane) -> model inputs, as numpy and tf.data.

One example row = one user context (history strictly before the event) and ``1 + K``
candidates: the rated movie first, then the K sampled never-rated movies. Labels:
``score`` 1 for the rated movie and 0 for negatives; ``rating`` only for the rated
movie (``rating_mask`` says which). Candidate movie features are gathered from the
static ``MovieTable`` after batching, so each batch is one vectorised gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.vocab import MovieTable, Vocab, left_pad

USER_COUNT_SCALE = 8.0  # log1p(rating count) / 8 ~ 0..1 on MovieLens


@dataclass
class ExampleArrays:
    """Index-encoded examples of one split, ready to batch."""

    user: dict[str, np.ndarray]        # user-side model inputs except interest_genres (derived in-graph)
    cand_movie_idx: np.ndarray         # [n, C] int32
    score: np.ndarray                  # [n, C] float32
    rating: np.ndarray                 # [n, C] float32
    rating_mask: np.ndarray            # [n, C] float32
    user_id: np.ndarray                # [n] raw user ids (evaluation)
    movie_id: np.ndarray               # [n] raw positive movie ids

    def __len__(self) -> int:
        return len(self.cand_movie_idx)


def load_users(users: pd.DataFrame, vocab: Vocab) -> pd.DataFrame:
    """Per raw user id: the demographic indices (unknown -> 0)."""
    u = users.drop_duplicates("user_id").set_index("user_id")
    return pd.DataFrame({
        "user_idx": vocab.user.encode(u.index.to_numpy()),
        "age_idx": vocab.age.encode(pd.to_numeric(u["age_bucket"], errors="coerce").fillna(-1).astype(int).to_numpy()),
        "gender_idx": vocab.gender.encode(u["gender"].fillna("").to_numpy(dtype=object)),
        "occupation_idx": vocab.occupation.encode(u["occupation"].fillna("").to_numpy(dtype=object)),
    }, index=u.index)


def user_context(user_ids: np.ndarray, demo: pd.DataFrame, vocab: Vocab, hist_movies: list, hist_ratings: list,
                 n_before: np.ndarray, mean_before: np.ndarray) -> dict[str, np.ndarray]:
    """User-side inputs for rows of (user, history). Shared by training and offline scoring."""
    d = demo.reindex(user_ids)
    user_idx = vocab.user.encode(user_ids)
    return {
        "user_idx": user_idx.astype(np.int32),
        "age_idx": d["age_idx"].fillna(0).to_numpy(np.int32),
        "gender_idx": d["gender_idx"].fillna(0).to_numpy(np.int32),
        "occupation_idx": d["occupation_idx"].fillna(0).to_numpy(np.int32),
        "user_stats": np.stack([np.log1p(np.asarray(n_before, np.float64)) / USER_COUNT_SCALE,
                                np.asarray(mean_before, np.float64) / 5.0], axis=1).astype(np.float32),
        "hist_movie_idx": vocab.movie.encode(left_pad(hist_movies, vocab.history_len, np.int64)),  # pad 0 -> 0
        "hist_rating": (left_pad(hist_ratings, vocab.history_len, np.float32) / 5.0).astype(np.float32),
    }


def example_arrays(examples: pd.DataFrame, users: pd.DataFrame, vocab: Vocab) -> ExampleArrays:
    """Encode one split's examples (positive first, then its sampled negatives)."""
    demo = load_users(users, vocab)
    ex = examples.reset_index(drop=True)
    negs = np.stack(ex["negatives"].to_numpy()) if len(ex) and len(ex["negatives"].iloc[0]) else np.zeros((len(ex), 0), np.int64)
    cand_raw = np.concatenate([ex["movie_id"].to_numpy()[:, None], negs], axis=1)
    c = cand_raw.shape[1]
    score = np.zeros((len(ex), c), np.float32)
    score[:, 0] = 1.0
    rating = np.zeros((len(ex), c), np.float32)
    rating[:, 0] = ex["rating"].to_numpy(np.float32)
    mask = np.zeros((len(ex), c), np.float32)
    mask[:, 0] = 1.0
    user = user_context(ex["user_id"].to_numpy(), demo, vocab, list(ex["hist_movies"]), list(ex["hist_ratings"]),
                        ex["n_before"].to_numpy(), ex["mean_before"].to_numpy())
    return ExampleArrays(user=user, cand_movie_idx=vocab.movie.encode(cand_raw), score=score, rating=rating,
                         rating_mask=mask, user_id=ex["user_id"].to_numpy(), movie_id=ex["movie_id"].to_numpy())


def with_negatives(arrays: ExampleArrays, extra: np.ndarray) -> ExampleArrays:
    """The same examples with ``extra`` [n, k] more negative candidates (vocabulary indices) after the others."""
    zeros = np.zeros(extra.shape, np.float32)
    return ExampleArrays(user=arrays.user, cand_movie_idx=np.concatenate([arrays.cand_movie_idx, extra], axis=1),
                         score=np.concatenate([arrays.score, zeros], axis=1),
                         rating=np.concatenate([arrays.rating, zeros], axis=1),
                         rating_mask=np.concatenate([arrays.rating_mask, zeros], axis=1),
                         user_id=arrays.user_id, movie_id=arrays.movie_id)


def candidate_features(table: MovieTable, cand_movie_idx: Any) -> dict[str, Any]:
    """Gather candidate-side inputs for a [B, N] tensor of movie indices (TF ops: runs in tf.data and graphs)."""
    import tensorflow as tf

    return {"cand_movie_idx": cand_movie_idx,
            "cand_genres": tf.gather(tf.constant(table.genres), cand_movie_idx),
            "cand_decade_idx": tf.gather(tf.constant(table.decade_idx), cand_movie_idx),
            "cand_title_idx": tf.gather(tf.constant(table.title_idx), cand_movie_idx),
            "cand_stats": tf.gather(tf.constant(table.stats), cand_movie_idx)}


def interest_from_history(table: MovieTable, hist_movie_idx: Any) -> Any:
    """[B, G] mean genre multi-hot of the (point-in-time) history: the user's taste profile."""
    import tensorflow as tf

    g = tf.gather(tf.constant(table.genres), hist_movie_idx)            # [B, H, G]
    valid = tf.cast(hist_movie_idx > 0, tf.float32)[..., None]
    return tf.reduce_sum(g * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)


def simulate_cold_start(inputs: dict[str, Any], cold_movie_rate: float, cold_user_rate: float, seed: int) -> dict[str, Any]:
    """Hide ids (and what only a known id brings) for a random share of candidates and users.

    A new movie has no id embedding and no rating statistics, only genres, year and
    title; a new user has no id, history or statistics, only demographics and declared
    interest genres. Training on such rows teaches the model to score both sensibly.
    """
    import tensorflow as tf

    out = dict(inputs)
    shape = tf.shape(inputs["cand_movie_idx"])
    cold_movie = tf.random.stateless_uniform(shape, seed=[seed, 1]) < cold_movie_rate
    out["cand_movie_idx"] = tf.where(cold_movie, tf.zeros_like(inputs["cand_movie_idx"]), inputs["cand_movie_idx"])
    out["cand_stats"] = tf.where(cold_movie[..., None], tf.zeros_like(inputs["cand_stats"]), inputs["cand_stats"])
    cold_user = tf.random.stateless_uniform(shape[:1], seed=[seed, 2]) < cold_user_rate
    for name in ("user_idx", "hist_movie_idx", "hist_rating", "user_stats"):
        value = inputs[name]
        mask = tf.reshape(cold_user, [-1] + [1] * (len(value.shape) - 1))
        out[name] = tf.where(mask, tf.zeros_like(value), value)
    return out


def dataset(arrays: ExampleArrays, table: MovieTable, batch_size: int, shuffle: bool, seed: int,
            cold_movie_rate: float = 0.0, cold_user_rate: float = 0.0):  # noqa: ANN201
    """A tf.data pipeline of (inputs, labels) batches (cold-start simulation only when rates > 0)."""
    import tensorflow as tf

    tensors = {**arrays.user, "cand_raw_idx": arrays.cand_movie_idx, "y_score": arrays.score,
               "y_rating": arrays.rating, "y_rating_mask": arrays.rating_mask}
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(min(len(arrays), 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def to_inputs(step, b):  # noqa: ANN001, ANN202
        inputs = {k: b[k] for k in arrays.user}
        inputs.update(candidate_features(table, b["cand_raw_idx"]))
        inputs["interest_genres"] = interest_from_history(table, b["hist_movie_idx"])
        if cold_movie_rate > 0 or cold_user_rate > 0:
            inputs = simulate_cold_start(inputs, cold_movie_rate, cold_user_rate, seed + tf.cast(step, tf.int32))
        labels = {"score": b["y_score"], "rating": b["y_rating"], "rating_mask": b["y_rating_mask"]}
        return inputs, labels

    ds = ds.enumerate()
    return ds.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def read_split(path: Path, split: str | list[str]) -> pd.DataFrame:
    """Examples of one or several splits from the batch plane's parquet table."""
    splits = [split] if isinstance(split, str) else list(split)
    return pd.read_parquet(path, filters=[("split", "in", splits)])

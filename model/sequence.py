"""The next-item sequence model: the seed's history encoder trained to predict what a user rates next.

Why it exists: on real MovieLens the order of a user's ratings carries most of the signal. The ranker alone,
trained pointwise against a few uniform negatives, learns to tell a plausible movie from a random one, and on
ML-100K / ml-latest-small it loses to a count of "what people rated right after your last movie". A causal
self-attention encoder over the history (SASRec), trained with a softmax over the *whole catalogue* at every
position of every training sequence, learns the ordering itself and beats those counts.

Shape: movie-id embedding (shared with the output layer) + position embedding -> ``blocks`` causal
self-attention blocks (pre-norm, residual, feed-forward) -> an optional LSTM (residual; off by default: on the
development sets it bought nothing per unit of training time) -> layer norm. The hidden state at the latest
position, dotted with every movie's embedding, gives the next-movie logits.

Inputs are the ranker's own history encoding: movie vocabulary indices (0 = padding or unknown), left-padded to
the signature's history length ``H``, so the latest movie is always at position ``H - 1`` and serving needs no
new input. Training cuts each user's sequence into windows of ``H`` that end at its last movie.

The exported signature uses it two ways (``model.export``): its log-probability of each candidate is mixed into
``score`` with the weight chosen on validation here (:func:`choose_mix`, jointly with the weight of the
neighbour prior of ``model.neighbours``), and the ``next_movies`` signature returns its top movies over the
catalogue (ordered with the same prior), a recall channel of the gateway.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

WEIGHTS_FILE = "sequence.weights.h5"
SPEC_FILE = "sequence.json"


@dataclass(frozen=True)
class SequenceSpec:
    """Sizes and switches of one sequence model (saved beside its weights)."""

    n_movies: int
    length: int
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    lstm: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_encoder(spec: SequenceSpec) -> Any:
    """The Keras encoder: ``idx [B, H] int32 -> logits [B, H, n_movies + 1]`` (index 0 never a target)."""
    import keras
    import tensorflow as tf

    class NextMovieModel(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="next_movie")
            d = spec.dim
            self.movie_embedding = keras.layers.Embedding(spec.n_movies + 1, d, name="movie_embedding")
            self.position_embedding = keras.layers.Embedding(spec.length, d, name="position_embedding")
            self.input_dropout = keras.layers.Dropout(spec.dropout)
            # one list per layer kind (Keras tracks lists of layers; a list of dicts would hide the weights)
            n = range(spec.blocks)
            self.norm1 = [keras.layers.LayerNormalization(name=f"block{i}_norm1") for i in n]
            self.attention = [keras.layers.MultiHeadAttention(spec.heads, d // spec.heads, dropout=spec.dropout,
                                                              name=f"block{i}_attention") for i in n]
            self.drop1 = [keras.layers.Dropout(spec.dropout) for _ in n]
            self.norm2 = [keras.layers.LayerNormalization(name=f"block{i}_norm2") for i in n]
            self.ff1 = [keras.layers.Dense(d, activation="relu", name=f"block{i}_ff1") for i in n]
            self.ff2 = [keras.layers.Dense(d, name=f"block{i}_ff2") for i in n]
            self.drop2 = [keras.layers.Dropout(spec.dropout) for _ in n]
            self.lstm = keras.layers.LSTM(d, return_sequences=True, name="lstm") if spec.lstm else None
            self.final_norm = keras.layers.LayerNormalization(name="final_norm")

        def hidden(self, idx: Any, training: bool = False) -> Any:
            """[B, H, d] states; position t has seen positions <= t only."""
            x = self.movie_embedding(idx) * (spec.dim ** 0.5) + self.position_embedding(tf.range(spec.length))[None]
            real = tf.cast(idx > 0, x.dtype)[..., None]
            x = self.input_dropout(x, training=training) * real
            for i in range(spec.blocks):
                h = self.norm1[i](x)
                h = self.attention[i](h, h, use_causal_mask=True, training=training)
                x = x + self.drop1[i](h, training=training)
                h = self.ff2[i](self.ff1[i](self.norm2[i](x)))
                x = (x + self.drop2[i](h, training=training)) * real
            if self.lstm is not None:
                x = (x + self.lstm(x, training=training)) * real
            return self.final_norm(x)

        def call(self, idx: Any, training: bool = False) -> Any:
            return tf.matmul(self.hidden(idx, training=training), self.movie_embedding.embeddings, transpose_b=True)

        def last_logits(self, idx: Any, training: bool = False) -> Any:
            """[B, n_movies + 1]: the logits after the last position only. Serving and evaluation need no
            other position, and the projection onto the catalogue is most of ``call``'s work (H times this)."""
            return tf.matmul(self.hidden(idx, training=training)[:, -1, :], self.movie_embedding.embeddings,
                             transpose_b=True)

    model = NextMovieModel()
    model(np.zeros((1, spec.length), np.int32))  # build the weights
    return model


def windows(sequences: Sequence[np.ndarray], length: int, stride: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs: every window of ``length`` movies (ending at each sequence's end, stepping back by
    ``stride``, 0 = ``length``: no overlap) as input, the same window shifted by one as targets; left-padded with
    0 (no target). With a stride below the length a movie is a target in several windows, each time after a
    different stretch of history (the early positions of a window see little of it)."""
    stride = stride or length
    xs, ys = [], []
    for s in sequences:
        end = len(s) - 1
        while end >= 1:
            start = max(0, end - length)
            x, y = s[start:end], s[start + 1:end + 1]
            xs.append(np.concatenate([np.zeros(length - len(x), np.int32), x]))
            ys.append(np.concatenate([np.zeros(length - len(y), np.int32), y]))
            end -= stride
    if not xs:
        return np.zeros((0, length), np.int32), np.zeros((0, length), np.int32)
    return np.stack(xs).astype(np.int32), np.stack(ys).astype(np.int32)


def last_window(history: Sequence[np.ndarray], length: int) -> np.ndarray:
    """[B, H] left-padded latest ``length`` movies of each history (what the signature receives)."""
    from model.vocab import left_pad

    return left_pad(history, length, np.int32)


def next_logits(model: Any, history: Sequence[np.ndarray], length: int, batch: int = 512) -> np.ndarray:
    """[B, n_movies + 1] next-movie logits after each history."""
    x = last_window(history, length)
    parts = [np.asarray(model.last_logits(x[s:s + batch], training=False)) for s in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.movie_embedding.input_dim), np.float32)


def hit_rate(logits: np.ndarray, history: Sequence[np.ndarray], targets: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Full-ranking HR@k and NDCG@k of ``targets`` (vocabulary indices) with each history masked; ties against."""
    from pipeline.metrics import full_ranks, hr_ndcg

    if not len(logits):
        return 0.0, 0.0
    s = logits.astype(np.float64).copy()
    s[:, 0] = -np.inf
    for i, h in enumerate(history):
        s[i, np.asarray(h, np.int64)] = -np.inf
    hr, ndcg = hr_ndcg(full_ranks(s, targets), np.asarray(targets) > 0, k)
    return float(hr.mean()), float(ndcg.mean())


def fit(spec: SequenceSpec, train: Sequence[np.ndarray], val_history: Sequence[np.ndarray], val_targets: np.ndarray,
        epochs: int, patience: int, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        budget_s: float = 0.0, stride: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train with the full-catalogue softmax; keep the epoch with the best validation NDCG@10.

    ``budget_s`` (0 = none) bounds the wall clock: no epoch starts that would end past it, judged by the
    last epoch's length (the first always runs).

    Early stopping on the ranking metric itself (not the loss): the loss keeps falling after the list stops
    improving. Returns the model (best weights) and a summary.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_encoder(spec)
    x, y = windows(train, spec.length, stride)
    if len(x) == 0:
        raise ValueError("no training sequence has two or more movies")
    batch_size = min(batch_size, len(x))
    step = train_step(model, keras.optimizers.Adam(learning_rate))
    rng = np.random.default_rng(seed)  # window order per epoch
    best, best_weights, stale, history = -1.0, model.get_weights(), 0, []
    t0 = time.perf_counter()
    stopped_by_budget = False
    for epoch in range(epochs):
        if budget_s and history and history[-1]["seconds"] + epoch_seconds > budget_s:
            stopped_by_budget = True
            break
        e0 = time.perf_counter()
        order = rng.permutation(len(x))
        losses = [float(step(x[b], y[b])) for b in np.array_split(order, len(x) // batch_size)]
        hr, ndcg = hit_rate(next_logits(model, val_history, spec.length), val_history, val_targets)
        row = {"loss": float(np.mean(losses)), "val_hr@10": round(hr, 4), "val_ndcg@10": round(ndcg, 4),
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        epoch_seconds = time.perf_counter() - e0
        if on_epoch:
            on_epoch(epoch, row)
        if ndcg > best:
            best, best_weights, stale = ndcg, model.get_weights(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.set_weights(best_weights)
    best_row = max(history, key=lambda r: r["val_ndcg@10"])
    return model, {"spec": spec.to_dict(), "windows": int(len(x)), "epochs_run": len(history),
                   "stopped_by_budget": stopped_by_budget,
                   "train_seconds": round(time.perf_counter() - t0, 1), "best": best_row, "history": history}


def train_step(model: Any, optimizer: Any) -> Callable[[np.ndarray, np.ndarray], Any]:
    """One XLA-compiled optimisation step ``(x [B, H], y [B, H]) -> loss``: full-catalogue softmax at every
    position with a target (``y > 0``).

    Why not ``model.fit``: one compiled function took 20-30 % less time per step on CPU than Keras' step
    (the projection of every position onto the catalogue is most of the work). Batches differ in size by at
    most one window, so it compiles at most twice.
    """
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(jit_compile=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = tf.matmul(model.hidden(x, training=True), model.movie_embedding.embeddings, transpose_b=True)
            per = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            mask = tf.cast(y > 0, per.dtype)
            loss = tf.reduce_sum(per * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda x, y: step(tf.constant(x), tf.constant(y))


def save(model: Any, spec: SequenceSpec, run_dir: Path, extra: dict[str, Any]) -> None:
    """Weights and spec into the run directory (written under temp names, then renamed)."""
    import os

    tmp = run_dir / (".tmp-" + WEIGHTS_FILE)
    model.save_weights(str(tmp))
    os.replace(tmp, run_dir / WEIGHTS_FILE)
    from pipeline.home import atomic_write_text

    atomic_write_text(run_dir / SPEC_FILE, json.dumps({"spec": spec.to_dict(), **extra}, indent=2))


def load(run_dir: Path) -> tuple[Any, dict[str, Any]] | None:
    """(model, saved record) of a run, or None for a run trained without a sequence model."""
    if not (run_dir / WEIGHTS_FILE).exists():
        return None
    record = json.loads((run_dir / SPEC_FILE).read_text())
    model = build_encoder(SequenceSpec(**record["spec"]))
    model.load_weights(str(run_dir / WEIGHTS_FILE))
    return model, record


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over movies 1..M; column 0 (padding) gets -1e9, as in the exported graph."""
    z = logits.astype(np.float64)[:, 1:]
    m = z.max(axis=1, keepdims=True)
    out = np.full(logits.shape, -1e9)
    out[:, 1:] = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return out


def mixed_logit(ranker_score: np.ndarray, sequence_logp: np.ndarray, mix: float, n_movies: int,
                prior_z: np.ndarray | None = None, weight: float = 0.0) -> np.ndarray:
    """The logit of the exported ``score``:
    (1 - mix) * logit(ranker score) + mix * (log p_next + log M) + weight * z, with ``z`` the neighbour prior
    (``model.neighbours``; standardised per user, 0 outside it).

    ``log M`` centres a uniform next-movie guess at 0, so a movie the sequence model knows nothing about (a new
    movie: index 0) sits at 0 and the ranker alone places it. Ordering within a user depends on ``mix`` and
    ``weight`` only.
    """
    p = np.clip(ranker_score.astype(np.float64), 1e-7, 1 - 1e-7)
    out = (1 - mix) * np.log(p / (1 - p)) + mix * (sequence_logp + np.log(n_movies))
    return out + weight * prior_z if prior_z is not None and weight else out


MIX_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Neighbour-prior weights tried with each mix. On the development sets the best lay at 0.25-0.5 (with the
#: sequence model alone); 0 keeps "no prior" a candidate, so the prior is only used where validation says so.
NEIGHBOUR_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def choose_mix(ranker_scores: np.ndarray, sequence_logp: np.ndarray, history: Sequence[np.ndarray],
               targets: np.ndarray, n_movies: int, prior_z: np.ndarray | None = None,
               weights: Sequence[float] = NEIGHBOUR_WEIGHTS, mixes: Sequence[float] = MIX_GRID
               ) -> tuple[float, float, dict[str, float]]:
    """The (mix, neighbour weight) with the best validation NDCG@10 (full ranking over the catalogue,
    histories masked); ties go to the earlier grid point (less mix, less prior). Without ``prior_z`` the
    weight is 0. A configured mix or weight is passed as a one-value grid.

    ``ranker_scores``, ``sequence_logp`` and ``prior_z`` are [B, n_movies + 1] over vocabulary indices (column
    0 unused). Returns (mix, weight, validation NDCG@10 per "mix" or "mix/weight").
    """
    table: dict[str, float] = {}
    best_mix, best_weight, best = mixes[0], 0.0, -1.0
    for mix in mixes:
        for weight in (weights if prior_z is not None else (0.0,)):
            _, ndcg = hit_rate(mixed_logit(ranker_scores, sequence_logp, mix, n_movies, prior_z, weight),
                               history, targets)
            table[f"{mix:g}" if prior_z is None else f"{mix:g}/{weight:g}"] = round(ndcg, 4)
            if ndcg > best:
                best_mix, best_weight, best = mix, float(weight), ndcg
    return best_mix, best_weight, table


def recall_order_weight(mix: float, weight: float) -> float:
    """The prior's weight relative to log p_next in ``next_movies``' order (the recall channel): the score's
    own ratio ``weight / mix``, with the mix floored at 0.05 so a score without the sequence model still
    gives a finite order."""
    return float(weight) / max(float(mix), 0.05)

"""Keras layers of the ranker, one small class per concept.

Every layer registers itself for `.keras` serialization (package ``recsys``), builds
its weights in ``build`` (so a reloaded model has them before the weights are read)
and returns float32 wherever a value leaves the model (attention weights, heads), so
the same code runs under a ``mixed_float16`` policy.

Padding convention, shared with the feature pipeline: index 0 means "unknown or
padding" everywhere, so a table for ``n`` known categories has ``n + 1`` rows and a
history is left-padded with 0. Masks travel between layers as explicit float tensors
(1 = real position, 0 = padding) made by `PaddingMask`, rather than Keras' implicit
mask propagation, so every layer states what it masks and nothing is lost when a
tensor passes through a layer that does not propagate masks.

Example::

    import keras, numpy as np
    from model.layers import CategoryEmbedding, PaddingMask, TargetAttention

    hist = np.array([[0, 0, 3, 7]])             # left-padded history of one user
    pad = PaddingMask()(hist)                  # [[0, 0, 1, 1]]
    vectors = CategoryEmbedding(10, 8)(hist)   # [1, 4, 8]
    cands = CategoryEmbedding(10, 8)(np.array([[1, 2, 5]]))
    attended, weights = TargetAttention(8)([cands, vectors, pad])
    # weights: [1, 3, 4], zero on the two padded positions
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

_PACKAGE = "recsys"
_NEG_INF = -1e9  # applied in float32 only: masked logits never reach a float16 softmax


def _register(cls: type) -> type:
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


def _known_indices(indices: Any, num_categories: int) -> Any:
    """int32 indices with anything outside ``[0, num_categories]`` mapped to row 0 (unknown)."""
    indices = ops.cast(indices, "int32")
    known = ops.logical_and(indices >= 0, indices <= num_categories)
    return ops.where(known, indices, ops.zeros_like(indices))


def _leading_shape(x: Any) -> tuple:
    """All dimensions of ``x`` but the last, dynamic ones as scalar tensors."""
    return tuple(ops.shape(x)[:-1])


@_register
class PaddingMask(keras.layers.Layer):
    """Index tensor -> float32 mask, 1.0 where the index is real and 0.0 where it is 0.

    The one place that knows "0 is padding"; every masking layer takes its output.
    """

    def call(self, indices: Any) -> Any:
        return ops.cast(ops.greater(indices, 0), "float32")


@_register
class IdDropout(keras.layers.Layer):
    """Replace an id by 0 ("unknown") with probability ``rate`` during training.

    Seed architecture, user-id dropout: the unknown row of the user table is trained on
    real traffic, so a user who signs up after training (index 0 at serving) gets a
    learned embedding instead of an untouched random one, and the model learns not to
    lean on the id alone. Identity at inference.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"IdDropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, indices: Any, training: bool | None = None) -> Any:
        if not training or self.rate == 0.0:
            return indices
        keep = keras.random.uniform(ops.shape(indices), seed=self.seed_generator) >= self.rate
        return ops.where(keep, indices, ops.zeros_like(indices))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@_register
class CategoryEmbedding(keras.layers.Layer):
    """Embedding for ``num_categories`` known values plus row 0 for unknown/padding.

    Indices outside ``[0, num_categories]`` (a movie added after training, a bad
    request) map to row 0 instead of failing on CPU or silently reading zeros on GPU.
    """

    def __init__(self, num_categories: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_categories < 0 or dim < 1:
            raise ValueError(f"bad CategoryEmbedding sizes: num_categories={num_categories}, dim={dim}")
        self.num_categories = int(num_categories)
        self.dim = int(dim)

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.table = self.add_weight(name="table", shape=(self.num_categories + 1, self.dim),
                                     initializer="uniform")

    def call(self, indices: Any) -> Any:
        return ops.take(self.table, _known_indices(indices, self.num_categories), axis=0)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*input_shape, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_categories": self.num_categories, "dim": self.dim}


@_register
class GenreConv(keras.layers.Layer):
    """Genre multi-hot ``[..., G]`` -> ``[..., 2 * filters]`` via a 1-D conv over genre embeddings.

    Seed architecture: each present genre contributes its embedding (weighted by the
    multi-hot value), a Conv1D across the genre axis mixes neighbouring genres (genre
    co-occurrence: "animation" next to "children's"), then a max and a mean over the
    genres actually present pool it. No genre at all gives zeros. Works on any leading
    shape, so one instance embeds both a user's interest genres ``[B, G]`` and the
    candidates' genres ``[B, N, G]`` in the same space.
    """

    def __init__(self, num_genres: int, dim: int, filters: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_genres = int(num_genres)
        self.dim = int(dim)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.Conv1D(self.filters, self.kernel_size, padding="same", activation="relu",
                                        name="conv")

    def build(self, input_shape: Sequence[int | None]) -> None:
        if input_shape[-1] != self.num_genres:
            raise ValueError(f"GenreConv expects {self.num_genres} genre columns, got {input_shape[-1]}")
        self.genre_table = self.add_weight(name="genre_table", shape=(self.num_genres, self.dim),
                                           initializer="uniform")
        self.conv.build((None, self.num_genres, self.dim))

    def call(self, multi_hot: Any) -> Any:
        lead = _leading_shape(multi_hot)
        weights = ops.reshape(multi_hot, (-1, self.num_genres))                 # [M, G]
        embedded = ops.expand_dims(weights, -1) * ops.expand_dims(self.genre_table, 0)
        features = self.conv(embedded)                                          # [M, G, F], >= 0
        present = ops.cast(ops.expand_dims(weights > 0, -1), features.dtype)
        pooled_max = ops.max(features * present, axis=1)
        count = ops.maximum(ops.sum(present, axis=1), 1.0)
        pooled_mean = ops.sum(features * present, axis=1) / count
        pooled = ops.concatenate([pooled_max, pooled_mean], axis=-1)
        return ops.reshape(pooled, (*lead, 2 * self.filters))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*input_shape[:-1], 2 * self.filters)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_genres": self.num_genres, "dim": self.dim,
                "filters": self.filters, "kernel_size": self.kernel_size}


@_register
class TitleCNN(keras.layers.Layer):
    """Title token ids ``[..., T]`` -> ``[..., filters * len(kernel_sizes)]`` (Kim-style text CNN).

    Seed architecture, title text: token embeddings, one Conv1D per kernel size
    (bigrams, trigrams), global max pool over real tokens only. An empty title gives
    zeros. ``padding="same"`` so titles shorter than a kernel still work.
    """

    def __init__(self, num_tokens: int, dim: int, filters: int, kernel_sizes: Sequence[int] = (2, 3),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.dim = int(dim)
        self.filters = int(filters)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.embedding = CategoryEmbedding(self.num_tokens, self.dim, name="token_embedding")
        self.convs = [keras.layers.Conv1D(self.filters, k, padding="same", activation="relu", name=f"conv_{k}")
                      for k in self.kernel_sizes]

    def build(self, input_shape: Sequence[int | None]) -> None:
        length = input_shape[-1]
        self.embedding.build((None, length))
        for conv in self.convs:
            conv.build((None, length, self.dim))

    def call(self, tokens: Any) -> Any:
        lead = _leading_shape(tokens)
        length = ops.shape(tokens)[-1]
        flat = ops.reshape(tokens, (-1, length))                                # [M, T]
        embedded = self.embedding(flat)                                         # [M, T, D]
        real = ops.cast(ops.expand_dims(flat > 0, -1), embedded.dtype)
        pooled = [ops.max(conv(embedded * real) * real, axis=1) for conv in self.convs]  # relu >= 0
        out = ops.concatenate(pooled, axis=-1)
        return ops.reshape(out, (*lead, self.filters * len(self.kernel_sizes)))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (*input_shape[:-1], self.filters * len(self.kernel_sizes))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_tokens": self.num_tokens, "dim": self.dim,
                "filters": self.filters, "kernel_sizes": list(self.kernel_sizes)}


@_register
class HistoryEmbedding(keras.layers.Layer):
    """``[movie vectors [B,H,D], ratings [B,H], padding [B,H]]`` -> history items ``[B,H,D]``.

    A history item is what the user watched, how they rated it (the rating as the
    data pipeline feeds it, stars / 5 in model/data.py; a learned linear projection to
    D, so the scale only affects conditioning) and how recent it was (a learned position embedding, SASRec;
    histories are left-padded so the last position is always the newest). Padded
    positions are exactly zero.
    """

    def __init__(self, length: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = int(length)
        self.dim = int(dim)
        self.rating_projection = keras.layers.Dense(self.dim, name="rating_projection")

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        self.positions = self.add_weight(name="positions", shape=(self.length, self.dim), initializer="uniform")
        self.rating_projection.build((None, self.length, 1))

    def call(self, inputs: Sequence[Any]) -> Any:
        movies, ratings, padding = inputs
        rating = self.rating_projection(ops.expand_dims(ratings, -1))
        items = movies + rating + ops.expand_dims(self.positions, 0)
        return items * ops.cast(ops.expand_dims(padding, -1), items.dtype)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        return (*input_shape[0][:-1], self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "length": self.length, "dim": self.dim}


@_register
class HistorySelfAttention(keras.layers.Layer):
    """One Transformer block over the history, ``[items [B,H,D], padding [B,H]]`` -> ``[B,H,D]``.

    SASRec (Kang & McAuley, 2018): multi-head self-attention whose keys exclude padded
    positions, residual + LayerNorm, a point-wise feed-forward, residual + LayerNorm.
    Not causal: at ranking time the whole history is in the past. Runs on ``[B, ...]``,
    once per user, never per candidate. Padded outputs are zeroed; an all-padding
    history stays finite (its softmax rows are uniform over masked logits, then zeroed).
    """

    def __init__(self, num_heads: int, dim: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dim = int(dim)
        self.dropout = float(dropout)
        self.attention = keras.layers.MultiHeadAttention(self.num_heads, max(1, self.dim // self.num_heads),
                                                         dropout=self.dropout, name="attention")
        self.norm_attention = keras.layers.LayerNormalization(name="norm_attention")
        self.feed_forward_in = keras.layers.Dense(self.dim, activation="relu", name="feed_forward_in")
        self.feed_forward_out = keras.layers.Dense(self.dim, name="feed_forward_out")
        self.norm_feed_forward = keras.layers.LayerNormalization(name="norm_feed_forward")
        self.drop = keras.layers.Dropout(self.dropout)

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        shape = tuple(input_shape[0])
        self.attention.build(shape, shape)
        self.norm_attention.build(shape)
        self.feed_forward_in.build(shape)
        self.feed_forward_out.build((*shape[:-1], self.dim))
        self.norm_feed_forward.build(shape)

    def call(self, inputs: Sequence[Any], training: bool | None = None) -> Any:
        items, padding = inputs
        real = padding > 0                                                        # [B, H]
        key_mask = ops.logical_and(ops.expand_dims(real, 1), ops.expand_dims(ops.ones_like(real), 2))
        attended = self.attention(items, items, attention_mask=key_mask, training=training)
        x = self.norm_attention(items + self.drop(attended, training=training))
        ff = self.feed_forward_out(self.feed_forward_in(x))
        x = self.norm_feed_forward(x + self.drop(ff, training=training))
        return x * ops.cast(ops.expand_dims(padding, -1), x.dtype)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        return tuple(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_heads": self.num_heads, "dim": self.dim, "dropout": self.dropout}


@_register
class HistoryLSTM(keras.layers.Layer):
    """``[items [B,H,D], padding [B,H]]`` -> ``(per-position outputs [B,H,U], final state [B,U])``.

    Seed architecture: an LSTM reads the (self-attended) history oldest -> newest so the
    order of recent taste survives; its final state is the user's sequence vector and
    its per-position outputs are what target attention looks at. Padded steps are
    skipped through the mask (with left padding the state starts at the first real
    item); an all-padding history gives zeros.

    Unrolled: the history length is fixed, and on a CPU the unrolled graph is the same arithmetic without a
    while loop's per-step executor overhead (measured in the exported ranker, 460 candidates, one thread:
    3.57 -> 3.00 CPU-ms per call, outputs identical), the largest single cost of a ranking call per user.
    """

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.lstm = keras.layers.LSTM(self.units, return_sequences=True, return_state=True, unroll=True, name="lstm")

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        self.lstm.build(tuple(input_shape[0]))

    def call(self, inputs: Sequence[Any]) -> tuple[Any, Any]:
        items, padding = inputs
        sequence, final, _cell = self.lstm(items, mask=padding > 0)
        real = ops.cast(ops.expand_dims(padding, -1), sequence.dtype)
        return sequence * real, final

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        shape = tuple(input_shape[0])
        return (*shape[:-1], self.units), (shape[0], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@_register
class MaskedMeanPool(keras.layers.Layer):
    """``[x [B,H,D], padding [B,H]]`` -> mean over real positions ``[B,D]`` (zeros if none).

    The sequence vector when both self-attention and the LSTM are ablated.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        x, padding = inputs
        real = ops.cast(ops.expand_dims(padding, -1), x.dtype)
        return ops.sum(x * real, axis=1) / ops.maximum(ops.sum(real, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        shape = tuple(input_shape[0])
        return (shape[0], shape[-1])


@_register
class TargetAttention(keras.layers.Layer):
    """``[candidates [B,N,Dc], history [B,H,Dh], padding [B,H]]`` -> ``(attended [B,N,Dh], weights [B,N,H])``.

    DIN (Zhou et al., 2018): the relevant part of a history depends on the candidate,
    so each candidate queries the encoded history itself. As in BST/DIEN the scores are
    scaled dot products of learned projections, normalised by a softmax over real
    positions only. Padded positions get weight exactly 0 and an all-padding history
    gives all-zero weights and a zero vector. Cost is ``B*N*H*D``, cheap next to the
    user tower it reuses. Weights are float32 (they are a model output).
    """

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.query = keras.layers.Dense(self.dim, use_bias=False, name="query")
        self.key = keras.layers.Dense(self.dim, use_bias=False, name="key")

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        self.query.build(tuple(input_shape[0]))
        self.key.build(tuple(input_shape[1]))

    def call(self, inputs: Sequence[Any]) -> tuple[Any, Any]:
        candidates, history, padding = inputs
        q = self.query(candidates)                                              # [B, N, D]
        k = self.key(history)                                                   # [B, H, D]
        logits = ops.cast(ops.einsum("bnd,bhd->bnh", q, k), "float32") / math.sqrt(self.dim)
        real = ops.expand_dims(padding > 0, 1)                                  # [B, 1, H]
        logits = ops.where(real, logits, ops.full_like(logits, _NEG_INF))
        weights = ops.softmax(logits, axis=-1) * ops.cast(real, "float32")
        attended = ops.einsum("bnh,bhd->bnd", ops.cast(weights, history.dtype), history)
        return attended, weights

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        cand, hist = tuple(input_shape[0]), tuple(input_shape[1])
        return (*cand[:-1], hist[-1]), (*cand[:-1], hist[1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim}


@_register
class ZeroAttention(keras.layers.Layer):
    """``[candidate ids [B,N], history ids [B,H]]`` -> float32 zeros ``[B,N,H]``.

    Keeps the ``attention`` output in the serving contract when target attention or the
    whole history encoder is ablated.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        candidates, history = inputs
        cand = ops.zeros_like(ops.cast(candidates, "float32"))
        hist = ops.zeros_like(ops.cast(history, "float32"))
        return ops.expand_dims(cand, -1) * ops.expand_dims(hist, 1)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        return (*tuple(input_shape[0]), input_shape[1][1])


@_register
class BroadcastToCandidates(keras.layers.Layer):
    """``[per-user [B,D], candidates [B,N,...]]`` -> ``[B,N,D]``.

    The serving contract: everything about the user (embeddings, the sequence encoder)
    is computed once per user row and only then broadcast to the N candidates, so the
    cost of the user tower does not grow with N and a candidate's score cannot depend
    on which other candidates share its request.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        per_user, candidates = inputs
        batch, n = ops.shape(candidates)[0], ops.shape(candidates)[1]
        return ops.broadcast_to(ops.expand_dims(per_user, 1), (batch, n, ops.shape(per_user)[-1]))

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        return (input_shape[1][0], input_shape[1][1], input_shape[0][-1])


@_register
class ResidualBlock(keras.layers.Layer):
    """``x [..., U]`` -> ``LayerNorm(x + Dense(Dropout(Dense_relu(x))))``, same shape.

    Seed architecture, interaction tower: residual blocks let the MLP go deeper without
    losing the raw feature crosses that feed it (He et al., 2016).
    """

    def __init__(self, units: int, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.dropout = float(dropout)
        self.inner = keras.layers.Dense(self.units, activation="relu", name="inner")
        self.outer = keras.layers.Dense(self.units, name="outer")
        self.drop = keras.layers.Dropout(self.dropout)
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape: Sequence[int | None]) -> None:
        if input_shape[-1] != self.units:
            raise ValueError(f"ResidualBlock needs {self.units} input features, got {input_shape[-1]}")
        self.inner.build(tuple(input_shape))
        self.outer.build(tuple(input_shape))
        self.norm.build(tuple(input_shape))

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.norm(x + self.outer(self.drop(self.inner(x), training=training)))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}


@_register
class FactorisedRating(keras.layers.Layer):
    """``[user_idx [B], cand_movie_idx [B,N], h [B,N,U]]`` -> predicted stars ``[B,N]``, float32.

    The rating head as a wide-and-deep pair: a biased factorisation prior
    ``mu + b_u + b_i + p_u . q_i`` (fitted by `model.baselines.BiasedMF` on the same training ratings and
    loaded with `set_prior`; frozen here) plus ``residual_weight x Dense_1(h)``, a correction the
    interaction tower learns from what a factorisation cannot see (the history, the moment, the
    candidate's content). Why: trained alone on the shared tower the head stayed behind biased MF on
    ml-latest-small (P2 RMSE 0.862 vs 0.846), because the tower is shaped by the interaction loss and
    never learns per-user and per-movie offsets as well as a dedicated, regularised factorisation does.
    ``residual_weight`` is 1 while training and then chosen on the validation ratings (0 = the prior
    alone), so the correction can only be kept where it helps. Unknown users and movies (index 0, or
    out of range) drop their bias and factors, as `BiasedMF.predict_pairs` does; the answer is clipped
    to ``[0, 5]``.
    """

    def __init__(self, n_users: int, n_movies: int, factors: int, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # stars in float32 under mixed precision: the prior needs the digits
        super().__init__(**kwargs)
        self.n_users, self.n_movies, self.factors = int(n_users), int(n_movies), int(factors)
        self.delta = keras.layers.Dense(1, name="delta")

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        frozen = {"initializer": "zeros", "trainable": False}
        self.mu = self.add_weight(name="mu", shape=(), **frozen)
        self.user_bias = self.add_weight(name="user_bias", shape=(self.n_users + 1,), **frozen)
        self.user_factors = self.add_weight(name="user_factors", shape=(self.n_users + 1, self.factors), **frozen)
        self.movie_bias = self.add_weight(name="movie_bias", shape=(self.n_movies + 1,), **frozen)
        self.movie_factors = self.add_weight(name="movie_factors", shape=(self.n_movies + 1, self.factors), **frozen)
        self.residual_weight = self.add_weight(name="residual_weight", shape=(), initializer="ones", trainable=False)
        self.delta.build(tuple(input_shape[2]))

    def set_prior(self, mu: float, user_bias: Any, user_factors: Any, movie_bias: Any, movie_factors: Any) -> None:
        """Load a fitted factorisation, rows in vocabulary order (row 0 = unknown: zeros)."""
        self.mu.assign(float(mu))
        self.user_bias.assign(user_bias)
        self.user_factors.assign(user_factors)
        self.movie_bias.assign(movie_bias)
        self.movie_factors.assign(movie_factors)

    def prior(self, user_idx: Any, cand_movie_idx: Any) -> Any:
        """``[B, N]`` the factorisation's prediction alone (no clipping)."""
        u = _known_indices(user_idx, self.n_users)
        m = _known_indices(cand_movie_idx, self.n_movies)
        pu = ops.take(self.user_factors, u, axis=0)                  # [B, F]
        qi = ops.take(self.movie_factors, m, axis=0)                 # [B, N, F]
        dot = ops.sum(qi * ops.expand_dims(pu, 1), axis=-1)          # [B, N]
        return self.mu + ops.expand_dims(ops.take(self.user_bias, u, axis=0), 1) + ops.take(self.movie_bias, m, axis=0) + dot

    def call(self, inputs: Sequence[Any]) -> Any:
        user_idx, cand_movie_idx, h = inputs
        delta = ops.squeeze(self.delta(ops.cast(h, "float32")), -1)
        return ops.clip(self.prior(user_idx, cand_movie_idx) + self.residual_weight * delta, 0.0, 5.0)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> tuple:
        return tuple(input_shape[1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_users": self.n_users, "n_movies": self.n_movies, "factors": self.factors}


@_register
class SigmoidHead(keras.layers.Layer):
    """``x [B,N,U]`` -> ``scale * sigmoid(Dense_1(x))`` squeezed to ``[B,N]``, float32.

    Seed architecture, two heads: ``scale=1`` is the interaction head (probability of
    engagement), ``scale=5`` the rating head (stars in 0..5, bounded by construction).
    The logit is cast to float32 before the sigmoid so mixed precision cannot saturate it.
    """

    def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.logit = keras.layers.Dense(1, name="logit")

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.logit.build(tuple(input_shape))

    def call(self, x: Any) -> Any:
        logit = ops.cast(ops.squeeze(self.logit(x), -1), "float32")
        return self.scale * ops.sigmoid(logit)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return tuple(input_shape[:-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}

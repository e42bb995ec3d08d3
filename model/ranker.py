"""The ranker: vocabulary sizes, switchable blocks, and the Keras model built from them.

Seed architecture (docs/architecture.md, "Quality bar for the model"): a user tower
(id with id-dropout, demographics, stats, interest genres), a movie tower (genre
multi-hot through a 1-D conv, id, release decade, title text CNN, stats), a history
encoder (movie id + rating + position -> self-attention (SASRec) -> LSTM), target
attention of each candidate over the encoded history (DIN), and an interaction MLP of
residual blocks feeding two heads: ``score`` (engagement probability) and ``rating``
(0..5 stars).

Serving contract: the user tower and history encoder run once per user row
``[B, ...]`` and are broadcast to the ``N`` candidates afterwards; only target
attention and the interaction MLP are per candidate. So ``N`` can be anything from 1
to the full recall list, a candidate's outputs never depend on its neighbours, and a
request may be split into several calls. Every input exists whatever the ablation, so
ablations never change the signature.

Example::

    spec = VocabSizes(n_users=100, n_movies=500, n_genres=18, n_ages=7, n_genders=2,
                      n_occupations=21, n_decades=10, n_title_tokens=2000,
                      history_len=30, title_len=8)
    model = build_ranker(spec, BlockConfig().ablate(["lstm"]))
    out = model(batch)   # {"score": [B, N], "rating": [B, N], "attention": [B, N, H]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import keras
import tensorflow as tf

from model import layers as L

#: Input names, in signature order (the serving contract).
USER_INPUTS = ("user_idx", "age_idx", "gender_idx", "occupation_idx", "user_stats",
               "hist_movie_idx", "hist_rating", "interest_genres")
CANDIDATE_INPUTS = ("cand_movie_idx", "cand_genres", "cand_decade_idx", "cand_title_idx", "cand_stats")
INPUT_NAMES = USER_INPUTS + CANDIDATE_INPUTS
OUTPUT_NAMES = ("score", "rating", "attention")
USER_STATS_DIM = 2
CAND_STATS_DIM = 3


@dataclass(frozen=True)
class VocabSizes:
    """Sizes the model's tables are built for; index 0 is always unknown/padding (tables have n + 1 rows)."""

    n_users: int
    n_movies: int
    n_genres: int
    n_ages: int
    n_genders: int
    n_occupations: int
    n_decades: int
    n_title_tokens: int
    history_len: int
    title_len: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"VocabSizes.{f.name} must be a non-negative int, got {value!r}")
        for name in ("n_genres", "history_len", "title_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"VocabSizes.{name} must be at least 1")

    @classmethod
    def of(cls, vocab: Any) -> VocabSizes:
        """The sizes of a ``model.vocab.Vocab``: what a ranker trained on it was built for."""
        return cls(n_users=vocab.user.size, n_movies=vocab.movie.size, n_genres=vocab.genre.size,
                   n_ages=vocab.age.size, n_genders=vocab.gender.size, n_occupations=vocab.occupation.size,
                   n_decades=vocab.decade.size, n_title_tokens=vocab.title_token.size,
                   history_len=vocab.history_len, title_len=vocab.title_len)


_MOVIE_BLOCKS = ("genre_conv", "movie_id", "decade", "title_cnn", "movie_stats")


@dataclass(frozen=True)
class BlockConfig:
    """Which blocks of the seed architecture are on, and the sizes; each block is one ablation switch.

    ``history=False`` removes the whole sequence encoder (the plain-MLP baseline);
    ``attention`` / ``lstm`` / ``target_attention`` only matter while it is on. With
    ``attention`` and ``lstm`` both off the sequence vector is a masked mean of the
    history items. ``movie_id=False`` drops the id from the candidate tower only: the
    history encoder has nothing but ids to describe past movies. ``residual=False``
    replaces each residual block by a plain Dense layer of the same width.
    ``rating_prior=False`` gives the rating head no factorisation prior (a plain sigmoid
    head on the interaction tower; see `model.layers.FactorisedRating`). User stats
    are always on (no block owns them), so the user vector is never empty; at least one
    candidate block must stay on, or all candidates would score the same.

    >>> BlockConfig().ablate(["lstm", "title_cnn"]).lstm
    False
    """

    user_id: bool = True
    demographics: bool = True
    genre_conv: bool = True
    movie_id: bool = True
    decade: bool = True
    title_cnn: bool = True
    movie_stats: bool = True
    attention: bool = True
    lstm: bool = True
    target_attention: bool = True
    residual: bool = True
    history: bool = True
    rating_prior: bool = True
    embedding_dim: int = 64
    dropout: float = 0.2
    user_id_dropout: float = 0.1
    attention_heads: int = 2
    residual_blocks: int = 2
    hidden: int = 128
    rating_factors: int = 128

    def __post_init__(self) -> None:
        for name in self.block_names():
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BlockConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("embedding_dim", "attention_heads", "hidden", "rating_factors"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BlockConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.residual_blocks < 0:
            raise ValueError(f"BlockConfig.residual_blocks must be >= 0, got {self.residual_blocks}")
        for name in ("dropout", "user_id_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"BlockConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not any(getattr(self, name) for name in _MOVIE_BLOCKS):
            raise ValueError(f"at least one candidate block must stay on: {', '.join(_MOVIE_BLOCKS)}")

    @classmethod
    def block_names(cls) -> tuple[str, ...]:
        """The switchable blocks (every bool field), in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.type in ("bool", bool))

    def ablate(self, names: Iterable[str]) -> BlockConfig:
        """A copy with the named blocks off; ValueError naming any unknown block."""
        names = list(names)
        unknown = sorted(set(names) - set(self.block_names()))
        if unknown:
            raise ValueError(f"unknown block(s) {', '.join(unknown)}; known: {', '.join(self.block_names())}")
        return dataclasses.replace(self, **{name: False for name in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockConfig:
        """Inverse of `to_dict`; missing keys take defaults, unknown keys are a ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BlockConfig key(s): {', '.join(unknown)}")
        return cls(**dict(data))


def input_signature(spec: VocabSizes) -> dict[str, tf.TensorSpec]:
    """`tf.TensorSpec` per input, batch (B) and candidates (N) left dynamic: for tf.function / export."""
    h, t, g = spec.history_len, spec.title_len, spec.n_genres
    shapes: dict[str, tuple[tuple[int | None, ...], str]] = {
        "user_idx": ((None,), "int32"), "age_idx": ((None,), "int32"), "gender_idx": ((None,), "int32"),
        "occupation_idx": ((None,), "int32"), "user_stats": ((None, USER_STATS_DIM), "float32"),
        "hist_movie_idx": ((None, h), "int32"), "hist_rating": ((None, h), "float32"),
        "interest_genres": ((None, g), "float32"),
        "cand_movie_idx": ((None, None), "int32"), "cand_genres": ((None, None, g), "float32"),
        "cand_decade_idx": ((None, None), "int32"), "cand_title_idx": ((None, None, t), "int32"),
        "cand_stats": ((None, None, CAND_STATS_DIM), "float32"),
    }
    return {name: tf.TensorSpec(shape, dtype, name=name) for name, (shape, dtype) in shapes.items()}


def _inputs(spec: VocabSizes, vector_dim: int | None = None) -> dict[str, keras.KerasTensor]:
    """The model's inputs; with ``vector_dim`` the candidate side is one precomputed ``cand_vec`` [B, N, d]."""
    specs = input_signature(spec)
    if vector_dim is not None:
        specs = {n: v for n, v in specs.items() if n in USER_INPUTS or n == "cand_movie_idx"}
        specs["cand_vec"] = tf.TensorSpec((None, None, vector_dim), "float32", name="cand_vec")
    return {name: keras.Input(shape=s.shape[1:], dtype=s.dtype.name, name=name) for name, s in specs.items()}


def _concat(parts: list[Any], name: str) -> Any:
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(axis=-1, name=name)(parts)


def build_ranker(spec: VocabSizes, blocks: BlockConfig, candidate_vectors: bool = False) -> keras.Model:
    """The ranking model for ``spec`` with the blocks of ``blocks``; uncompiled.

    Inputs and outputs are dicts keyed by `INPUT_NAMES` and `OUTPUT_NAMES` (shapes in
    `input_signature`); the outputs are ``score`` [B, N] in (0, 1), ``rating`` [B, N] in
    (0, 5) and ``attention`` [B, N, H] (zeros when target attention is off).

    ``candidate_vectors=True`` builds the same model without its candidate tower: it takes
    ``cand_vec`` [B, N, d] (the tower's output, see `candidate_tower`) and ``cand_movie_idx``
    instead of the five candidate inputs. Layer names match, so a trained ranker's weights
    copy over by name (`split_ranker`).
    """
    d = blocks.embedding_dim
    small = max(4, d // 4)
    x = _inputs(spec, d if candidate_vectors else None)

    # User tower: [B, ...] only.
    user_parts = [keras.layers.Dense(small, activation="relu", name="user_stats_dense")(x["user_stats"])]
    if blocks.user_id:
        uid = L.IdDropout(blocks.user_id_dropout, name="user_id_dropout")(x["user_idx"])
        user_parts.append(L.CategoryEmbedding(spec.n_users, d, name="user_id_embedding")(uid))
    if blocks.demographics:
        for field, size in (("age", spec.n_ages), ("gender", spec.n_genders), ("occupation", spec.n_occupations)):
            user_parts.append(L.CategoryEmbedding(size, small, name=f"{field}_embedding")(x[f"{field}_idx"]))
    genre_conv = L.GenreConv(spec.n_genres, small, small, name="genre_conv") if blocks.genre_conv else None
    if genre_conv is not None:
        user_parts.append(genre_conv(x["interest_genres"]))
    user_vec = keras.layers.Dense(d, name="user_projection")(_concat(user_parts, "user_features"))

    # Candidate tower: [B, N, ...]; it depends on the movie alone (the precomputed path reads it from a table).
    movie_embedding = L.CategoryEmbedding(spec.n_movies, d, name="movie_id_embedding")
    if candidate_vectors:
        cand_vec = x["cand_vec"]
    else:
        cand_parts = []
        if blocks.movie_id:
            cand_parts.append(movie_embedding(x["cand_movie_idx"]))
        if genre_conv is not None:
            cand_parts.append(genre_conv(x["cand_genres"]))
        if blocks.decade:
            cand_parts.append(L.CategoryEmbedding(spec.n_decades, small, name="decade_embedding")(
                x["cand_decade_idx"]))
        if blocks.title_cnn:
            cand_parts.append(L.TitleCNN(spec.n_title_tokens, max(4, d // 2), max(4, d // 2), name="title_cnn")(
                x["cand_title_idx"]))
        if blocks.movie_stats:
            cand_parts.append(keras.layers.Dense(small, activation="relu", name="movie_stats_dense")(
                x["cand_stats"]))
        cand_vec = keras.layers.Dense(d, name="candidate_projection")(_concat(cand_parts, "candidate_features"))

    # History encoder: [B, H, ...], once per user; then target attention per candidate.
    per_user = [user_vec]
    per_cand = [cand_vec]
    attention = None
    if blocks.history:
        padding = L.PaddingMask(name="history_padding")(x["hist_movie_idx"])
        items = L.HistoryEmbedding(spec.history_len, d, name="history_embedding")(
            [movie_embedding(x["hist_movie_idx"]), x["hist_rating"], padding])
        if blocks.attention:
            items = L.HistorySelfAttention(blocks.attention_heads, d, blocks.dropout, name="history_self_attention")(
                [items, padding])
        if blocks.lstm:
            items, seq_vec = L.HistoryLSTM(d, name="history_lstm")([items, padding])
        else:
            seq_vec = L.MaskedMeanPool(name="history_mean")([items, padding])
        per_user.append(seq_vec)
        if blocks.target_attention:
            attended, attention = L.TargetAttention(d, name="target_attention")([cand_vec, items, padding])
            per_cand.append(attended)
    if attention is None:
        attention = L.ZeroAttention(name="no_attention")([x["cand_movie_idx"], x["hist_movie_idx"]])

    # Interaction: [B, N, ...].
    user_b = L.BroadcastToCandidates(name="broadcast_user")([user_vec, cand_vec])
    broadcast = [user_b] + [L.BroadcastToCandidates(name="broadcast_sequence")([v, cand_vec]) for v in per_user[1:]]
    cross = keras.layers.Multiply(name="user_x_candidate")([user_b, cand_vec])
    h = _concat(broadcast + per_cand + [cross], "interaction_features")
    h = keras.layers.Dense(blocks.hidden, activation="relu", name="interaction_dense")(h)
    h = keras.layers.Dropout(blocks.dropout, name="interaction_dropout")(h)
    for i in range(blocks.residual_blocks):
        if blocks.residual:
            h = L.ResidualBlock(blocks.hidden, blocks.dropout, name=f"residual_{i}")(h)
        else:
            h = keras.layers.Dense(blocks.hidden, activation="relu", name=f"plain_{i}")(h)
            h = keras.layers.Dropout(blocks.dropout, name=f"plain_dropout_{i}")(h)
    outputs = {
        "score": L.SigmoidHead(1.0, name="score_head")(h),
        "rating": (L.FactorisedRating(spec.n_users, spec.n_movies, blocks.rating_factors, name="rating_head")(
            [x["user_idx"], x["cand_movie_idx"], h]) if blocks.rating_prior
            else L.SigmoidHead(5.0, name="rating_head")(h)),
        "attention": attention,
    }
    return keras.Model(inputs=x, outputs=outputs, name="ranker_on_vectors" if candidate_vectors else "ranker")


def candidate_tower(ranker: keras.Model) -> keras.Model:
    """The trained ranker's candidate tower alone: the five candidate inputs -> ``cand_vec`` [B, N, d]."""
    return keras.Model(inputs={n: ranker.input[n] for n in CANDIDATE_INPUTS},
                       outputs=ranker.get_layer("candidate_projection").output, name="candidate_tower")


def split_ranker(ranker: keras.Model, spec: VocabSizes, blocks: BlockConfig) -> tuple[keras.Model, keras.Model]:
    """(candidate tower, the rest on ``cand_vec``) of a trained ranker, sharing its weights.

    ``rest(user inputs + cand_movie_idx + cand_vec=tower(candidate inputs))`` equals ``ranker(inputs)``: the
    tower's output depends on the movie alone, so serving can compute it once per movie and version.
    """
    rest = build_ranker(spec, blocks, candidate_vectors=True)
    for layer in rest.layers:
        if layer.weights:
            layer.set_weights(ranker.get_layer(layer.name).get_weights())
    return candidate_tower(ranker), rest

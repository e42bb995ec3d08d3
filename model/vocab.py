"""Raw values -> the integer indices the ranking model embeds.

The batch plane writes ``vocab.json`` beside the training examples; this module turns
it into vectorised encoders (index 0 always means "unknown / padding", so a value
never seen in training still has a learned embedding) and into the static movie
feature table the model reads candidates' genres, decade, title tokens and
statistics from. The same encoders build the lookup tables of the exported
SavedModel, so training and serving index values identically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.features import decade as decade_of
from pipeline.schemas import GENRES

N_USER_STATS = 2
N_MOVIE_STATS = 3


@dataclass(frozen=True)
class Encoder:
    """Value -> 1-based index over a fixed list; anything else -> 0."""

    values: tuple

    @property
    def size(self) -> int:
        return len(self.values)

    def encode(self, raw: Iterable[Any] | np.ndarray) -> np.ndarray:
        index = pd.Index(self.values)
        flat = np.asarray(raw, dtype=object if index.dtype == object else None)
        shape = flat.shape
        pos = index.get_indexer(flat.reshape(-1))
        return (pos + 1).astype(np.int32).reshape(shape)


@dataclass(frozen=True)
class Vocab:
    """All encoders of one batch version's vocabulary."""

    movie: Encoder
    user: Encoder
    genre: Encoder
    age: Encoder
    gender: Encoder
    occupation: Encoder
    decade: Encoder
    title_token: Encoder
    history_len: int
    title_len: int = 8

    @classmethod
    def from_json(cls, data: dict[str, Any], title_len: int = 8) -> "Vocab":
        return cls(movie=Encoder(tuple(int(m) for m in data["movie_id"])),
                   user=Encoder(tuple(int(u) for u in data["user_id"])),
                   genre=Encoder(tuple(data["genre"])), age=Encoder(tuple(int(a) for a in data["age_bucket"])),
                   gender=Encoder(tuple(data["gender"])), occupation=Encoder(tuple(data["occupation"])),
                   decade=Encoder(tuple(int(d) for d in data["decade"])),
                   title_token=Encoder(tuple(data["title_token"])), history_len=int(data["history_len"]),
                   title_len=title_len)

    @classmethod
    def load(cls, path: Path, title_len: int = 8) -> "Vocab":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")), title_len)

    def to_json(self) -> dict[str, Any]:
        return {"movie_id": list(self.movie.values), "user_id": list(self.user.values),
                "genre": list(self.genre.values), "age_bucket": list(self.age.values),
                "gender": list(self.gender.values), "occupation": list(self.occupation.values),
                "decade": list(self.decade.values), "title_token": list(self.title_token.values),
                "history_len": self.history_len, "title_len": self.title_len}


def genre_multi_hot(genre_lists: Sequence[Sequence[str] | None]) -> np.ndarray:
    """[n, len(GENRES)] float32 multi-hot in the canonical genre order."""
    pos = {g: i for i, g in enumerate(GENRES)}
    out = np.zeros((len(genre_lists), len(GENRES)), dtype=np.float32)
    for row, genres in enumerate(genre_lists):
        for g in genres if genres is not None else ():
            if g in pos:
                out[row, pos[g]] = 1.0
    return out


def pad_tokens(token_lists: Sequence[Sequence[str] | None], length: int) -> np.ndarray:
    """[n, length] object array of tokens, right-padded with '' (index 0 after encoding)."""
    out = np.full((len(token_lists), length), "", dtype=object)
    for row, tokens in enumerate(token_lists):
        toks = list(tokens if tokens is not None else ())[:length]
        out[row, : len(toks)] = toks
    return out


def movie_stats(popularity: np.ndarray, mean_rating: np.ndarray, bayes_rating: np.ndarray) -> np.ndarray:
    """The [n, 3] float32 statistics block, scaled to about 0..1 (NaN -> 0)."""
    stats = np.stack([np.asarray(popularity, np.float64) / 10.0, np.asarray(mean_rating, np.float64) / 5.0,
                      np.asarray(bayes_rating, np.float64) / 5.0], axis=1)
    return np.nan_to_num(stats, nan=0.0).astype(np.float32)


@dataclass(frozen=True)
class MovieTable:
    """Static features of every vocabulary movie, row = movie index (row 0 = unknown)."""

    genres: np.ndarray      # [M+1, G] float32
    decade_idx: np.ndarray  # [M+1] int32
    title_idx: np.ndarray   # [M+1, T] int32
    stats: np.ndarray       # [M+1, 3] float32

    @classmethod
    def build(cls, movie_features: pd.DataFrame, vocab: Vocab) -> "MovieTable":
        n = vocab.movie.size + 1
        mf = movie_features.copy()
        mf["idx"] = vocab.movie.encode(mf["movie_id"].to_numpy())
        mf = mf[mf["idx"] > 0]
        genres = np.zeros((n, len(GENRES)), np.float32)
        decade_idx = np.zeros(n, np.int32)
        title_idx = np.zeros((n, vocab.title_len), np.int32)
        stats = np.zeros((n, N_MOVIE_STATS), np.float32)
        idx = mf["idx"].to_numpy()
        genres[idx] = genre_multi_hot(list(mf["genres"]))
        years = [None if pd.isna(y) else int(y) for y in mf["year"]]
        decade_idx[idx] = vocab.decade.encode(np.array([decade_of(y) if y else -1 for y in years]))
        title_idx[idx] = vocab.title_token.encode(pad_tokens(list(mf["title_tokens"]), vocab.title_len))
        stats[idx] = movie_stats(mf["popularity"].to_numpy(), mf["mean_rating"].to_numpy(), mf["bayes_rating"].to_numpy())
        return cls(genres=genres, decade_idx=decade_idx, title_idx=title_idx, stats=stats)


def left_pad(sequences: Sequence[Sequence[float]], length: int, dtype: Any) -> np.ndarray:
    """[n, length]: the last ``length`` items of each sequence, right-aligned, 0-padded on the left."""
    out = np.zeros((len(sequences), length), dtype=dtype)
    for row, seq in enumerate(sequences):
        tail = list(seq if seq is not None else ())[-length:]
        if tail:
            out[row, length - len(tail):] = tail
    return out

"""Training runs on disk: where a run lives, which is the latest, and loading a finished one.

Its own module so that export and evaluation, which only read runs, do not import the trainer (which itself
uses them to choose the score mix): ``model.train`` -> ``model.evaluate`` / ``model.export`` -> ``model.runs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.home import Home


class TrainingError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "ranker.keras"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab.json"

    @property
    def movie_table(self) -> Path:
        return self.root / "movie_table.npz"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def backup(self) -> Path:
        return self.root / "backup"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def runs_dir(home: Home) -> Path:
    return home.models / "runs"


def latest_run(home: Home) -> Path:
    pointer = runs_dir(home) / "LATEST"
    if not pointer.exists():
        raise TrainingError(f"no trained model in {runs_dir(home)}: run `recsys train` first")
    return runs_dir(home) / pointer.read_text().strip()


def load_run(run_dir: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(ranker, vocab, movie table, summary) of a finished run."""
    import keras

    import model.layers  # noqa: F401 - registers the custom layers for deserialisation
    from model.vocab import MovieTable, Vocab

    paths = RunPaths(Path(run_dir))
    if not paths.model.exists():
        raise TrainingError(f"{paths.root} holds no finished model (ranker.keras)")
    ranker = keras.models.load_model(paths.model)
    vocab = Vocab.from_json(json.loads(paths.vocab.read_text()), title_len=json.loads(paths.vocab.read_text())["title_len"])
    t = np.load(paths.movie_table)
    table = MovieTable(genres=t["genres"], decade_idx=t["decade_idx"], title_idx=t["title_idx"], stats=t["stats"])
    return ranker, vocab, table, json.loads(paths.summary.read_text())

"""`recsys train`: fit the ranker on a batch version's training examples.

Mode follows the batch version's split: a ``p1`` build trains on P1's train split and
early-stops on its validation split (test untouched); a serving build (``none``)
trains on everything but each user's last interaction, which only drives early
stopping. A run lives in ``<home>/models/runs/<name>/`` (``ranker.keras``, vocabulary,
movie table, summary, TensorBoard logs, and a backup that lets an interrupted run
resume where it stopped). On a GPU: mixed precision and a MirroredStrategy.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.home import Home, atomic_write_text, table_path


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


def block_config(cfg: Config):  # noqa: ANN201
    from model.ranker import BlockConfig

    m = cfg.model
    return BlockConfig(embedding_dim=m.embedding_dim, hidden=m.hidden, dropout=m.dropout,
                       user_id_dropout=m.user_id_dropout, attention_heads=m.attention_heads,
                       residual_blocks=m.residual_blocks).ablate(list(m.ablate))


def vocab_sizes(vocab):  # noqa: ANN001, ANN201
    from model.ranker import VocabSizes

    return VocabSizes(n_users=vocab.user.size, n_movies=vocab.movie.size, n_genres=vocab.genre.size,
                      n_ages=vocab.age.size, n_genders=vocab.gender.size, n_occupations=vocab.occupation.size,
                      n_decades=vocab.decade.size, n_title_tokens=vocab.title_token.size,
                      history_len=vocab.history_len, title_len=vocab.title_len)


def _strategy() -> tuple[Any, str]:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPU(s), mixed_float16"
    return tf.distribute.get_strategy(), "CPU, float32"


def train(cfg: Config, version: str | None = None, run_name: str | None = None,
          verbose: int = 1, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train one ranker; returns the run summary (also written to ``summary.json``)."""
    import keras

    from model.data import dataset, example_arrays, read_split
    from model.ranker import build_ranker
    from model.trainer import RankerTrainer
    from model.vocab import MovieTable, Vocab

    home = Home(cfg.home)
    version = version or home.current_version()
    if version is None:
        raise TrainingError(f"no batch version in {home.root}: run `recsys batch` first")
    manifest = home.read_manifest(version)
    if "samples" not in manifest.get("steps", {}):
        raise TrainingError(f"batch version {version} has no training examples (its 'samples' step did not run)")
    split = manifest["split"]
    blocks = block_config(cfg)
    tag = "full" if not cfg.model.ablate else "no-" + "-".join(sorted(cfg.model.ablate))
    run_name = run_name or f"{version}-{split}-{tag}"
    paths = RunPaths(runs_dir(home) / run_name)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(cfg.model.seed)
    vocab = Vocab.load(table_path(home, version, "vocab.json"), cfg.features.title_max_tokens)
    movie_features = pd.read_parquet(table_path(home, version, "movie_features"))
    users = pd.read_parquet(table_path(home, version, "users"))
    table = MovieTable.build(movie_features, vocab)
    examples_path = table_path(home, version, "examples")
    train_df = read_split(examples_path, "train")
    if cfg.model.max_train_examples and len(train_df) > cfg.model.max_train_examples:
        train_df = train_df.sample(n=cfg.model.max_train_examples, random_state=cfg.model.seed)
    val_df = read_split(examples_path, "val")
    if len(train_df) == 0 or len(val_df) == 0:
        raise TrainingError(f"batch version {version} has {len(train_df)} train and {len(val_df)} validation examples")
    train_arrays = example_arrays(train_df, users, vocab)
    val_arrays = example_arrays(val_df, users, vocab)
    strategy, device = _strategy()
    batch = cfg.model.batch_size * max(1, strategy.num_replicas_in_sync)
    train_ds = dataset(train_arrays, table, batch, shuffle=True, seed=cfg.model.seed,
                       cold_movie_rate=cfg.model.cold_movie_rate, cold_user_rate=cfg.model.cold_user_rate)
    val_ds = dataset(val_arrays, table, batch, shuffle=False, seed=cfg.model.seed)

    with strategy.scope():
        ranker = build_ranker(vocab_sizes(vocab), blocks)
        trainer = RankerTrainer(ranker, score_weight=cfg.model.score_weight, rating_weight=cfg.model.rating_weight)
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.model.learning_rate))
        for inputs, _ in val_ds.take(1):  # build before fit: BackupAndRestore needs built weights to restore into
            trainer(inputs)

    history_rows: list[dict[str, float]] = []

    class _Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            row = {k: float(v) for k, v in (logs or {}).items()}
            history_rows.append(row)
            if on_epoch:
                on_epoch(epoch, row)

    callbacks = [
        keras.callbacks.BackupAndRestore(str(paths.backup)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.model.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, cfg.model.patience - 1)),
        keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard), write_graph=False),
        keras.callbacks.ModelCheckpoint(str(paths.checkpoints / "best.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
        _Record(),
    ]
    t0 = time.perf_counter()
    trainer.fit(train_ds, validation_data=val_ds, epochs=cfg.model.epochs, callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - t0
    best = min(history_rows, key=lambda r: r.get("val_loss", np.inf)) if history_rows else {}

    tmp_model = paths.root / ".ranker.tmp.keras"
    ranker.save(tmp_model)
    os.replace(tmp_model, paths.model)
    atomic_write_text(paths.vocab, json.dumps(vocab.to_json()))
    np.savez(paths.root / ".movie_table.tmp.npz", genres=table.genres, decade_idx=table.decade_idx,
             title_idx=table.title_idx, stats=table.stats)
    os.replace(paths.root / ".movie_table.tmp.npz", paths.movie_table)
    shutil.rmtree(paths.backup, ignore_errors=True)
    summary = {
        "run": run_name, "batch_version": version, "split": split, "device": device,
        "blocks": blocks.to_dict(), "ablate": list(cfg.model.ablate),
        "train_examples": len(train_arrays), "val_examples": len(val_arrays),
        "epochs_run": len(history_rows), "train_seconds": round(seconds, 1),
        "best_epoch": {k: round(v, 5) for k, v in best.items()}, "history": history_rows,
        "config": {k: getattr(cfg.model, k) for k in ("batch_size", "learning_rate", "epochs", "patience", "seed",
                                                      "score_weight", "rating_weight", "max_train_examples",
                                                      "cold_movie_rate", "cold_user_rate")},
    }
    atomic_write_text(paths.summary, json.dumps(summary, indent=2))
    atomic_write_text(runs_dir(home) / "LATEST", run_name + "\n")
    return summary


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

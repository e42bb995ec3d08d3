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

from model import neighbours as N
from model.runs import RunPaths, TrainingError, latest_run, load_run, runs_dir  # noqa: F401 - the trainer's public names
from pipeline.config import Config
from pipeline.home import Home, atomic_write_text, table_path


#: Seconds of `model.train_budget_s` kept back from the ranker (which trains last) for choosing the mix and saving.
FINISH_RESERVE_S = 90.0


def ranker_seconds(train_budget_s: float, elapsed_s: float) -> float:
    """The ranker's time bound (0 = none): what the next-movie model, loading and the rating prior left of
    ``train_budget_s``, less the reserve for the mix and saving; at least a second, so it always takes a step."""
    if not train_budget_s:
        return 0.0
    return max(train_budget_s - elapsed_s - FINISH_RESERVE_S, 1.0)


def block_config(cfg: Config):  # noqa: ANN201
    from model.ranker import BlockConfig

    m = cfg.model
    return BlockConfig(embedding_dim=m.embedding_dim, hidden=m.hidden, dropout=m.dropout,
                       user_id_dropout=m.user_id_dropout, attention_heads=m.attention_heads,
                       residual_blocks=m.residual_blocks).ablate(list(m.ablate))


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
    from model.ranker import VocabSizes, build_ranker
    from model.trainer import RankerTrainer, TimeBudget
    from model.vocab import MovieTable, Vocab

    started = time.perf_counter()
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
    interactions = pd.read_parquet(table_path(home, version, "interactions"))  # read once: prior, sequence, mix
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

    sequence_fit = None
    if cfg.model.sequence_epochs > 0:
        seq_budget = cfg.model.train_budget_s * cfg.model.sequence_budget_share
        sequence_fit = fit_sequence(cfg, interactions, vocab, verbose=verbose, budget_s=seq_budget)
    neighbour_fit = None  # the score uses it only beside the sequence model; hard negatives use it always
    if sequence_fit is not None or cfg.model.hard_negatives:
        neighbour_fit = fit_neighbours(cfg, interactions, vocab, verbose)
    if cfg.model.hard_negatives and neighbour_fit is not None:
        train_arrays, val_arrays = (add_hard_negatives(a, neighbour_fit.on_train, interactions, vocab,
                                                       cfg.model.hard_negatives, cfg.model.seed + i)
                                    for i, a in enumerate((train_arrays, val_arrays)))

    strategy, device = _strategy()
    batch = cfg.model.batch_size * max(1, strategy.num_replicas_in_sync)
    train_ds = dataset(train_arrays, table, batch, shuffle=True, seed=cfg.model.seed,
                       cold_movie_rate=cfg.model.cold_movie_rate, cold_user_rate=cfg.model.cold_user_rate)
    val_ds = dataset(val_arrays, table, batch, shuffle=False, seed=cfg.model.seed)
    epochs, steps_per_epoch = cfg.model.epochs, None
    if cfg.model.epoch_examples and len(train_arrays) > cfg.model.epoch_examples:
        # an epoch is a slice of the endlessly reshuffled stream; `epochs` still bounds the passes over the data
        slices = -(-len(train_arrays) // cfg.model.epoch_examples)
        epochs, steps_per_epoch = cfg.model.epochs * slices, -(-cfg.model.epoch_examples // batch)
        train_ds = train_ds.repeat()

    with strategy.scope():
        ranker = build_ranker(VocabSizes.of(vocab), blocks)
        trainer = RankerTrainer(ranker, score_weight=cfg.model.score_weight, rating_weight=cfg.model.rating_weight,
                                listwise_weight=cfg.model.listwise_weight)
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.model.learning_rate))
        for inputs, _ in val_ds.take(1):  # build before fit: BackupAndRestore needs built weights to restore into
            trainer(inputs)
    prior_info: dict[str, Any] = {}
    if blocks.rating_prior:
        prior_info = fit_rating_prior(ranker, interactions, vocab, blocks.rating_factors, cfg.model.seed)

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
    budget = TimeBudget(ranker_seconds(cfg.model.train_budget_s, time.perf_counter() - started))
    callbacks.insert(0, budget)
    t0 = time.perf_counter()
    trainer.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - t0
    best = min(history_rows, key=lambda r: r.get("val_loss", np.inf)) if history_rows else {}
    if blocks.rating_prior:
        prior_info["residual_weight"], prior_info["validation_rmse"] = choose_residual_weight(ranker, val_ds)

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
        "epochs_run": len(history_rows), "train_seconds": round(seconds, 1), "stopped_by_budget": budget.stopped,
        "epoch_examples": (steps_per_epoch or 0) * batch or len(train_arrays),
        "best_epoch": {k: round(v, 5) for k, v in best.items()}, "history": history_rows,
        "rating_prior": prior_info,
        "config": {k: getattr(cfg.model, k) for k in ("batch_size", "learning_rate", "epochs", "patience", "seed",
                                                      "score_weight", "rating_weight", "max_train_examples",
                                                      "cold_movie_rate", "cold_user_rate", "epoch_examples",
                                                      "train_budget_s", "sequence_budget_share", "hard_negatives",
                                                      "listwise_weight")},
    }
    if sequence_fit is not None:
        summary["sequence"] = mix_and_save_sequence(cfg, version, vocab, table, movie_features, users, ranker, paths,
                                                    sequence_fit, neighbour_fit, verbose=verbose)
        summary["train_seconds"] = round(summary["train_seconds"] + summary["sequence"]["train_seconds"], 1)
    else:  # a rerun into the same run directory must not export an earlier run's sequence model or prior
        from model import sequence as S

        for name in (S.WEIGHTS_FILE, S.SPEC_FILE, N.FILE):
            (paths.root / name).unlink(missing_ok=True)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(paths.summary, json.dumps(summary, indent=2))
    atomic_write_text(runs_dir(home) / "LATEST", run_name + "\n")
    return summary


def fit_rating_prior(ranker: Any, interactions: pd.DataFrame, vocab: Any, factors: int, seed: int) -> dict[str, Any]:
    """Fit biased MF on the version's training ratings and load it into the rating head as its prior.

    The same `BiasedMF` as the P2 baseline (one definition), on the same ratings the ranker trains on
    (``train`` interactions; validation and test untouched), laid out in vocabulary order.
    """
    from model.baselines import BiasedMF

    t0 = time.perf_counter()
    mf = BiasedMF(interactions[interactions["split"] == "train"], factors=factors, seed=seed)
    u = vocab.user.encode(mf.users.to_numpy())
    m = vocab.movie.encode(mf.items.to_numpy())
    ku, km = u > 0, m > 0
    user_bias = np.zeros(vocab.user.size + 1, np.float32)
    user_factors = np.zeros((vocab.user.size + 1, factors), np.float32)
    movie_bias = np.zeros(vocab.movie.size + 1, np.float32)
    movie_factors = np.zeros((vocab.movie.size + 1, factors), np.float32)
    user_bias[u[ku]], user_factors[u[ku]] = mf.bu[ku], mf.p[ku]
    movie_bias[m[km]], movie_factors[m[km]] = mf.bi[km], mf.q[km]
    ranker.get_layer("rating_head").set_prior(mf.mu, user_bias, user_factors, movie_bias, movie_factors)
    return {"factors": factors, "holdout_rmse": round(mf.holdout_rmse, 4), "seconds": round(time.perf_counter() - t0, 1)}


RESIDUAL_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_residual_weight(ranker: Any, val_ds: Any) -> tuple[float, dict[str, float]]:
    """Set the rating head's ``residual_weight`` to the grid value with the lowest validation RMSE.

    0 keeps the factorisation prior alone, so the learned correction stays only where it helps on ratings the
    training never saw. Returns (weight, RMSE per weight).
    """
    layer = ranker.get_layer("rating_head")
    batches = [(inputs, labels["rating"].numpy(), labels["rating_mask"].numpy()) for inputs, labels in val_ds]
    table: dict[str, float] = {}
    for w in RESIDUAL_GRID:
        layer.residual_weight.assign(w)
        se = n = 0.0
        for inputs, rating, mask in batches:
            pred = np.asarray(ranker(inputs, training=False)["rating"])
            se += float(np.sum(mask * (pred - rating) ** 2))
            n += float(mask.sum())
        table[f"{w:g}"] = round(float(np.sqrt(se / max(n, 1.0))), 4)
    best = min(RESIDUAL_GRID, key=lambda w: (table[f"{w:g}"], w))
    layer.residual_weight.assign(best)
    return best, table


def _sequences(frame: pd.DataFrame, vocab: Any) -> dict[int, np.ndarray]:
    """Per user, the vocabulary indices of their rated movies in time order (unknown movies dropped)."""
    frame = frame.sort_values(["user_id", "pos"], kind="stable")
    idx = vocab.movie.encode(frame["movie_id"].to_numpy())
    out: dict[int, np.ndarray] = {}
    for u, rows in pd.Series(idx, index=frame["user_id"].to_numpy()).groupby(level=0):
        seq = rows.to_numpy(np.int32)
        out[int(u)] = seq[seq > 0]
    return out


@dataclass
class SequenceFit:
    """A trained next-movie model and the validation users it was early-stopped on (the mix is chosen on them)."""

    model: Any
    spec: Any
    summary: dict[str, Any]
    inter: pd.DataFrame
    val: pd.DataFrame
    users: list[int]
    history: list[np.ndarray]
    targets: np.ndarray


def fit_sequence(cfg: Config, inter: pd.DataFrame, vocab: Any, verbose: int = 1, budget_s: float = 0.0) -> SequenceFit:
    """The next-movie model on the version's split, trained first so the ranker gets whatever time it leaves.

    Sequences are the version's ``train`` interactions; each user's ``val`` movie (P1: the second-to-last; a
    serving build: the last) drives early stopping and, later, the choice of the mix, both on full-catalogue
    NDCG@10, the measure the lists are judged by.
    """
    from model import sequence as S

    m = cfg.model
    train_seqs = _sequences(inter[inter["split"] == "train"], vocab)
    val = inter[inter["split"] == "val"].drop_duplicates("user_id", keep="last").set_index("user_id")
    users = [u for u in sorted(val.index) if len(train_seqs.get(int(u), ())) > 0]
    targets = vocab.movie.encode(val.loc[users, "movie_id"].to_numpy())
    keep = targets > 0
    users, targets = [u for u, k in zip(users, keep) if k], targets[keep]
    history = [train_seqs[int(u)] for u in users]
    spec = S.SequenceSpec(n_movies=vocab.movie.size, length=vocab.history_len, dim=m.sequence_dim,
                          blocks=m.sequence_blocks, dropout=m.dropout, lstm=m.sequence_lstm)

    def report(epoch: int, row: dict[str, float]) -> None:
        if verbose:
            print(f"sequence model epoch {epoch + 1}: loss {row['loss']:.4f}  validation HR@10 {row['val_hr@10']:.4f}"
                  f"  NDCG@10 {row['val_ndcg@10']:.4f}  ({row['seconds']:.0f} s)", flush=True)

    model, summary = S.fit(spec, list(train_seqs.values()), history, targets, epochs=m.sequence_epochs,
                           patience=m.sequence_patience, batch_size=m.sequence_batch_size,
                           learning_rate=m.sequence_learning_rate, seed=m.seed, on_epoch=report, budget_s=budget_s,
                           stride=m.sequence_window_stride)
    return SequenceFit(model, spec, summary, inter, val, users, history, targets)


def fit_neighbours(cfg: Config, inter: pd.DataFrame, vocab: Any, verbose: int = 1) -> Any:
    """The neighbour prior (``model.neighbours``) tuned and fitted on the version's split, or None when neither
    the score (``model.neighbour_weight`` 0) nor the ranker's hard negatives use it. Fitted before the ranker,
    so its seconds come out of the ranker's budget."""
    if cfg.model.neighbour_weight == 0 and not cfg.model.hard_negatives:
        return None
    fitted = N.fit(inter, vocab.movie, cfg.model.neighbour_max_movies, cfg.model.neighbour_successors)
    if verbose:
        print(f"neighbour prior: {fitted.exported.size} movies, EASE lambda {fitted.exported.lam:g}, transition "
              f"beta {fitted.exported.beta:g} ({fitted.seconds:.0f} s)", flush=True)
    return fitted


def add_hard_negatives(arrays: Any, prior: Any, inter: pd.DataFrame, vocab: Any, k: int, seed: int) -> Any:
    """``k`` more negatives per example from the successors of its latest history movie
    (``model.neighbours.hard_negatives``; the prior fitted on the training split), never a movie the user rated
    in the train or validation split (test is not read)."""
    from model.data import with_negatives

    seen = inter[inter["split"] != "test"]
    rated = seen["user_id"].to_numpy(np.int64) * (1 << 32) + vocab.movie.encode(seen["movie_id"].to_numpy())
    extra = N.hard_negatives(prior, arrays.user["hist_movie_idx"][:, -1], arrays.user_id, arrays.cand_movie_idx[:, 1:],
                             np.unique(rated), k, seed)
    return with_negatives(arrays, extra)


def mix_and_save_sequence(cfg: Config, version: str, vocab: Any, table: Any, movie_features: pd.DataFrame,
                          users_table: pd.DataFrame, ranker: Any, paths: RunPaths, fit: SequenceFit,
                          neighbour_fit: Any = None, verbose: int = 1) -> dict[str, Any]:
    """Choose the mix of the next-movie log-probability and the weight of the neighbour prior in the exported
    score (jointly, on the validation users the model was early-stopped on), then save the model, and the
    prior when its weight is above 0, beside the ranker."""
    import tempfile

    from model import sequence as S
    from model.evaluate import P1Data, SignatureScorer
    from model.baselines import Catalogue, UserRow
    from model.export import _write_vocab_files, build_module

    m = cfg.model
    model, spec, summary, inter, val = fit.model, fit.spec, fit.summary, fit.inter, fit.val
    users, history, targets = fit.users, fit.history, fit.targets
    mix, table_of_mix = m.sequence_mix, {}
    weight = m.neighbour_weight if neighbour_fit is not None else 0.0
    if mix < 0 or weight < 0:
        rng = np.random.default_rng(m.seed)
        pick = np.sort(rng.choice(len(users), size=min(m.mix_users, len(users)), replace=False))
        mf = movie_features.set_index("movie_id")
        mf = mf.reindex(list(vocab.movie.values)).reset_index()
        demo = users_table.drop_duplicates("user_id").set_index("user_id")
        raw = inter[inter["split"] == "train"].sort_values(["user_id", "pos"], kind="stable").groupby("user_id")
        groups = [raw.get_group(users[i]) for i in pick]
        rows = [UserRow(int(users[i]), g["movie_id"].to_numpy(np.int64), g["rating"].to_numpy(np.float32))
                for i, g in zip(pick, groups)]
        data = P1Data(train=inter, visible=inter, test=val, catalogue=Catalogue(mf["movie_id"].to_numpy(np.int64)),
                      movies=mf, users=demo, version=version)
        files = _write_vocab_files(vocab, Path(tempfile.mkdtemp(prefix="recsys-vocab-")))
        module = build_module(ranker, vocab, table, files)
        scorer = SignatureScorer("ranker", lambda **kw: module.serve(**kw), data, vocab.history_len, vocab.title_len)
        ranker_scores = np.concatenate([scorer.score(rows[s:s + 16])[0] for s in range(0, len(rows), 16)])
        ranker_scores = np.concatenate([np.full((len(rows), 1), 0.5), ranker_scores], axis=1)
        hist = [history[i] for i in pick]
        logp = S.log_softmax(S.next_logits(model, hist, spec.length))
        # the prior as the exported graph computes it: from the signature's H latest movies only
        prior_z = neighbour_fit.on_train.z(S.last_window(hist, spec.length)) if neighbour_fit is not None else None
        mix, weight, table_of_mix = S.choose_mix(
            ranker_scores, logp, hist, targets[pick], spec.n_movies, prior_z,
            weights=S.NEIGHBOUR_WEIGHTS if weight < 0 else (weight,), mixes=S.MIX_GRID if mix < 0 else (mix,))
        if verbose:
            print(f"score mix (sequence share/neighbour weight -> validation NDCG@10): {table_of_mix}; "
                  f"chosen {mix:g}/{weight:g}", flush=True)
    prior_path = paths.root / N.FILE
    if weight > 0:
        neighbour_fit.exported.save(prior_path)
    else:
        prior_path.unlink(missing_ok=True)  # a resumed run's stale prior must not be exported
    neighbour = neighbour_fit.info() if neighbour_fit is not None else {}
    extra = {"mix": mix, "mix_validation": table_of_mix, "neighbour_weight": weight, "neighbour": neighbour}
    S.save(model, spec, paths.root, extra)
    return {**summary, **extra}

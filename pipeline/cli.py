"""The `recsys` command line: a thin layer that parses flags and calls the modules.

    recsys [--home DIR] [--config FILE] <command> ...

Commands: ``data`` (synth, inspect), ``batch``, ``evaluate``, ``redis``, ``config``,
``demo``. Later planes add ``train``, ``export``, ``serve`` and ``stream`` as
sub-parsers of the same tree (see ``COMMANDS``). Errors a user can fix (bad input,
bad config, missing data) print one clear line and exit 2; nothing prints a
traceback unless ``RECSYS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import Config, ConfigError, as_dict, load_config, sample_toml
from pipeline.home import Home

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


# --- helpers --------------------------------------------------------------------------
def _config(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    return load_config(home=args.home, config_file=args.config, overrides=overrides)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=False)


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a table; when stdout is a file or pipe (CI logs), wide enough not to truncate names."""
    console = out if out.is_terminal else Console(width=160)
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console.print(table)


# --- data -----------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from pipeline import synth

    knobs = {k: getattr(args, k) for k in ("users", "movies", "ratings", "seed") if getattr(args, k) is not None}
    cfg = _config(args, {"synth": knobs} if knobs else None)
    target = Path(args.out) if args.out else Home(cfg.home).synthetic_data
    with _progress() as progress:
        task = progress.add_task("synthesising", total=100)
        summary = synth.generate(cfg.synth, target, overwrite=args.overwrite,
                                 progress=lambda stage, frac: progress.update(task, description=stage, completed=int(frac * 100)))
        progress.update(task, completed=100)
    _print_table(f"synthetic MovieLens (ML-1M layout) in {target}", ["statistic", "value"],
                 [[k, v] for k, v in summary.as_dict().items()])
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from pipeline import movielens as ml

    layout = ml.detect_layout(Path(args.dir))
    rows = []
    for table in ("ratings", "movies", "users", "tags"):
        src = layout.source(table)
        if src is None:
            rows.append([table, "-", "absent", "-"])
            continue
        df, bad = ml.read_table(layout, table, on_bad_rows=args.on_bad_rows)
        rows.append([table, src.path.name, len(df), bad])
    _print_table(f"{layout.name} dataset at {layout.root}", ["table", "file", "rows", "skipped bad rows"], rows)
    return 0


def _ensure_default_data(cfg: Config) -> Path:
    """The home's synthetic dataset, generated on first use."""
    from pipeline import synth

    target = Home(cfg.home).synthetic_data
    if not (target / "ratings.dat").exists():
        console.print(f"[yellow]no --data given: generating synthetic MovieLens data into {target}")
        with _progress() as progress:
            task = progress.add_task("synthesising", total=100)
            synth.generate(cfg.synth, target, overwrite=True,
                           progress=lambda stage, frac: progress.update(task, description=stage, completed=int(frac * 100)))
    return target


# --- batch ----------------------------------------------------------------------------
def _batch_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = {}
    if getattr(args, "split", None):
        data["split"] = args.split
    if getattr(args, "on_bad_rows", None):
        data["on_bad_rows"] = args.on_bad_rows
    return {"data": data} if data else {}


def run_batch_with_progress(cfg: Config, data_dir: Path | None, steps: list[str] | None = None,
                            version: str | None = None) -> dict[str, Any]:
    from spark_jobs.batch import STEPS, run_batch

    chosen = steps or list(STEPS)
    with _progress() as progress:
        task = progress.add_task("starting Spark", total=len(chosen))

        def on_step(name: str, phase: str, result: dict[str, Any] | None) -> None:
            if phase == "start":
                progress.update(task, description=f"batch: {name}")
            else:
                progress.advance(task)
                progress.console.print(f"  [green]✓[/] {name} ({result.get('seconds', 0)} s)")

        manifest = run_batch(cfg, data_dir, steps=steps, version=version, on_step=on_step)
    rows = []
    for name, result in manifest["steps"].items():
        brief = {k: v for k, v in result.items() if k != "seconds" and not isinstance(v, dict)}
        rows.append([name, result.get("seconds"), json.dumps(brief, default=str)[:90]])
    _print_table(f"batch version {manifest['version']} ({manifest['status']}, split={manifest['split']})",
                 ["step", "seconds", "summary"], rows)
    return manifest


def cmd_batch(args: argparse.Namespace) -> int:
    cfg = _config(args, _batch_overrides(args))
    steps = args.steps.split(",") if args.steps else None
    data = Path(args.data) if args.data else None
    if data is None and args.version is None:
        data = _ensure_default_data(cfg)
    run_batch_with_progress(cfg, data, steps=steps, version=args.version)
    return 0


# --- evaluate -------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline import evaluate as ev

    cfg = _config(args)
    report = _evaluate_recall(cfg, args) if args.stage == "recall" else _evaluate_model(cfg, args)
    metric_names = list(dict.fromkeys(k for r in report.rows for k in r.metrics))
    rows = [[r.model, r.protocol, *[r.metrics.get(m, "") for m in metric_names], r.seconds] for r in report.rows]
    _print_table(f"evaluation ({args.stage}) of batch {report.info['batch_version']} ({report.info['users']} users)",
                 ["model", "protocol", *metric_names, "seconds"], rows)
    if args.json:
        ev.write_json(report, Path(args.json))
        console.print(f"wrote {args.json}")
    return 0


def _evaluate_recall(cfg: Config, args: argparse.Namespace):  # noqa: ANN202
    import redis

    from pipeline import evaluate as ev
    from pipeline.redis_server import redis_for_home

    with redis_for_home(cfg) as url, _progress() as progress:
        task = progress.add_task("evaluating recall (P1)", total=None)
        client = redis.Redis.from_url(url)
        try:
            return ev.evaluate_recall(cfg, client, k=args.k, max_users=args.max_users,
                                      on_progress=lambda i, n: progress.update(task, completed=i, total=n))
        finally:
            client.close()


def _evaluate_model(cfg: Config, args: argparse.Namespace):  # noqa: ANN202
    from model import evaluate as mev
    from model.export import exported_versions, model_base
    from model.train import runs_dir
    from pipeline.evaluate import Report

    home = Home(cfg.home)
    if mev.build_split(cfg) == "p2":
        return mev.evaluate_p2(cfg, runs=args.runs.split(",") if args.runs else [], max_rows=args.max_users)
    data = mev.load_p1(cfg)
    hl, tl = cfg.samples.history_len, cfg.features.title_max_tokens
    scorers: list = []
    base = model_base(home)
    versions = exported_versions(home)
    if versions:
        fn = mev.saved_model_fn(base / str(versions[0]))
        scorers.append(mev.SignatureScorer(f"ranker (export v{versions[0]})", fn, data, hl, tl))
        if args.cold:
            scorers.append(mev.SignatureScorer(f"ranker (export v{versions[0]}) [cold user]", fn, data, hl, tl, cold_users=True))
    for run in (args.runs.split(",") if args.runs else []):
        scorers.append(mev.SignatureScorer(f"run {run}", mev.run_fn(runs_dir(home) / run), data, hl, tl))
    if not scorers:
        raise UsageError("no exported model (recsys export) and no --runs: nothing to evaluate")
    if not args.no_baselines:
        scorers += mev.baselines(data, home)
    with _progress() as progress:
        task = progress.add_task("evaluating", total=None)
        rows = mev.evaluate_scorers(data, scorers, max_users=args.max_users, k=args.k,
                                    on_progress=lambda name, i, n: progress.update(task, description=name, completed=i, total=n))
        if args.cold and versions:
            users = sorted(int(u) for u in data.test.index)[: args.max_users or None]
            rows.append(mev.cold_movie_row(scorers[0], data, users, k=args.k))
    report = Report(rows=rows, info={"batch_version": data.version, "users": min(args.max_users or 10**9, len(data.test)),
                                     "protocol": "P1", "catalogue": int(len(data.catalogue.movie_ids))})
    for name in (args.runs.split(",") if args.runs else []):
        summary = runs_dir(home) / name / "summary.json"
        if summary.exists():
            report.info.setdefault("train_seconds", {})[name] = json.loads(summary.read_text())["train_seconds"]
    return report


# --- model ----------------------------------------------------------------------------
def _model_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    model: dict[str, Any] = {}
    for flag in ("epochs", "batch_size", "max_train_examples", "patience"):
        if getattr(args, flag, None) is not None:
            model[flag] = getattr(args, flag)
    if getattr(args, "ablate", None):
        model["ablate"] = [a.strip() for a in args.ablate.split(",") if a.strip()]
    return {"model": model} if model else {}


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import train

    cfg = _config(args, _model_overrides(args))
    from model.ranker import BlockConfig

    BlockConfig().ablate(list(cfg.model.ablate))  # unknown block names fail before any data is read
    summary = train(cfg, version=args.version, run_name=args.run, verbose=1 if out.is_terminal else 2)
    best = summary["best_epoch"]
    _print_table(f"trained {summary['run']} ({summary['device']})", ["", "value"], [
        ["batch version / split", f"{summary['batch_version']} / {summary['split']}"],
        ["examples train / val", f"{summary['train_examples']:,} / {summary['val_examples']:,}"],
        ["epochs run", summary["epochs_run"]], ["train seconds", summary["train_seconds"]],
        ["best val_loss / val_auc / val_rating_mse",
         f"{best.get('val_loss')} / {best.get('val_auc')} / {best.get('val_rating_mse')}"],
        ["ablated blocks", ", ".join(summary["ablate"]) or "none"]])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.export import export
    from model.train import latest_run, runs_dir

    cfg = _config(args)
    home = Home(cfg.home)
    run = runs_dir(home) / args.run if args.run else latest_run(home)
    path = export(home, run)
    out.print(f"exported {run.name} -> {path} (TF Serving layout; model name '{path.parent.name}', version {path.name})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from model.explain_cli import explain

    cfg = _config(args)
    result = explain(cfg, args.user, [int(m) for m in args.movie.split(",")], Path(args.out) if args.out else None)
    for movie, drivers in result["drivers"].items():
        out.print(f"[bold]{result['titles'].get(movie, movie)}[/]: score {result['scores'][movie]:.3f}, "
                  f"predicted rating {result['ratings'][movie]:.2f}")
        for m, w in drivers:
            out.print(f"   because you watched {result['titles'].get(m, m)}  (attention {w:.2f})")
    out.print(f"heatmap: {result['png']}")
    return 0


# --- redis ----------------------------------------------------------------------------
def cmd_redis(args: argparse.Namespace) -> int:
    from pipeline import redis_server as rs

    cfg = _config(args)
    data_dir = Home(cfg.home).redis_dir
    running = rs.find_running(data_dir)
    if args.action == "status":
        out.print(f"running at {running.url} (pid {running.pid})" if running else "not running")
        return 0 if running else 1
    if args.action == "start":
        server = running or rs.start_redis(data_dir)
        out.print(server.url)
        return 0
    if running:
        running.stop(save=True)
        out.print(f"stopped (data saved in {data_dir})")
    else:
        out.print("not running")
    return 0


# --- config ---------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "sample":
        sys.stdout.write(sample_toml())
        return 0
    out.print_json(json.dumps(as_dict(_config(args))))
    return 0


# --- demo -----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import redis

    from pipeline.redis_server import redis_for_home
    from pipeline.recall import merge
    from pipeline.store import RedisStore

    overrides = {"synth": {"users": args.users, "ratings": args.ratings, "movies": args.movies}}
    cfg = _config(args, overrides)
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else _ensure_default_data(cfg)
    manifest = run_batch_with_progress(cfg, data)
    with redis_for_home(cfg) as url:
        client = redis.Redis.from_url(url)
        store = RedisStore(client, cfg.redis.key_prefix)
        users = sorted(int(u) for u in _sample_users(cfg, manifest["version"], args.show))
        for user_id in users + [10**9]:
            ctx, feats = store.user_context(user_id)
            candidates = merge(ctx, store, cfg.recall)[:args.k]
            titles = _titles(store, [c.movie_id for c in candidates] + [m for m, _, _ in ctx.history[-3:]])
            who = (f"user {user_id} ({feats.get('gender')}, age {feats.get('age_bucket')}, likes {', '.join(ctx.top_genres)})"
                   if feats else f"unknown user {user_id} (cold start)")
            recent = "; ".join(titles.get(m, str(m)) for m, _, _ in ctx.history[-3:]) or "-"
            _print_table(f"{who}\nrecently rated: {recent}", ["#", "movie", "recall score", "channels"],
                         [[i + 1, titles.get(c.movie_id, c.movie_id), c.score, ",".join(c.sources)]
                          for i, c in enumerate(candidates)])
        client.close()
    console.print(f"[bold green]demo done in {time.perf_counter() - t0:.0f} s[/]: home {cfg.home}, "
                  f"batch version {manifest['version']} published to Redis (saved under {Home(cfg.home).redis_dir}).")
    return 0


def _sample_users(cfg: Config, version: str, n: int) -> list[int]:
    import pandas as pd

    from pipeline.home import table_path

    uf = pd.read_parquet(table_path(Home(cfg.home), version, "user_features"), columns=["user_id", "n_ratings"])
    return uf.sort_values("user_id").iloc[:: max(1, len(uf) // max(n, 1))]["user_id"].head(n).tolist()


def _titles(store: Any, movie_ids: list[int]) -> dict[int, str]:
    pipe = store.client.pipeline(transaction=False)
    for m in movie_ids:
        pipe.hget(store.keys.movie(store.version, m), "title")
    return {m: json.loads(t) for m, t in zip(movie_ids, pipe.execute()) if t}


# --- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="Movie recall-and-rank pipeline: batch (Spark), "
                                     "stream (Flink), ranking (TensorFlow), serving (gRPC).")
    parser.add_argument("--home", help="home directory of all artifacts (default $RECSYS_HOME or ./var)")
    parser.add_argument("--config", help="TOML config file (default <home>/recsys.toml when present)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    data = sub.add_parser("data", help="generate or inspect MovieLens-format data")
    dsub = data.add_subparsers(dest="action", required=True, metavar="action")
    synth = dsub.add_parser("synth", help="write a synthetic dataset in the ML-1M layout")
    synth.add_argument("--out", help="output directory (default <home>/data/synthetic)")
    synth.add_argument("--users", type=int)
    synth.add_argument("--movies", type=int)
    synth.add_argument("--ratings", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    synth.set_defaults(func=cmd_data_synth)
    inspect = dsub.add_parser("inspect", help="detect a dataset's layout and validate every row")
    inspect.add_argument("dir")
    inspect.add_argument("--on-bad-rows", choices=("fail", "skip"), default="fail")
    inspect.set_defaults(func=cmd_data_inspect)

    batch = sub.add_parser("batch", help="run the Spark batch plane and publish to Redis")
    batch.add_argument("--data", help="MovieLens directory (default: the home's synthetic data, generated if absent)")
    batch.add_argument("--split", choices=("none", "p1", "p2"),
                       help="'p1': hold out each user's last two ratings (leave-one-out); 'p2': a random 10%% (rating prediction)")
    batch.add_argument("--steps", help="comma-separated subset of ingest,prepare,features,recall,samples,publish")
    batch.add_argument("--version", help="rerun --steps inside this existing batch version")
    batch.add_argument("--on-bad-rows", choices=("fail", "skip"), help="malformed input rows: fail (default) or skip")
    batch.set_defaults(func=cmd_batch)

    evaluate = sub.add_parser("evaluate", help="quality under EVALUATION.md protocols")
    evaluate.add_argument("--stage", choices=("recall", "model"), default="recall",
                          help="recall: channel coverage; model: rankers and baselines (P1 full, sampled, rating error)")
    evaluate.add_argument("--runs", help="(model) comma-separated training runs to add as rows, e.g. ablations")
    evaluate.add_argument("--no-baselines", action="store_true", help="(model) skip popularity, item-kNN and MF")
    evaluate.add_argument("--cold", action="store_true", help="(model) add the cold-start user and movie slices")
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--max-users", type=int, help="evaluate a seeded sample of users (P2: of test ratings)")
    evaluate.add_argument("--json", help="also write the table as JSON here")
    evaluate.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="train the ranking model on the current batch version's examples")
    tr.add_argument("--version", help="batch version (default: CURRENT)")
    tr.add_argument("--run", help="run name (default: <version>-<split>-<ablation>); an interrupted run resumes")
    tr.add_argument("--ablate", help="comma-separated blocks to switch off, e.g. attention,lstm")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--patience", type=int)
    tr.add_argument("--max-train-examples", type=int, help="train on a seeded sample (0 = all)")
    tr.set_defaults(func=cmd_train)

    ex = sub.add_parser("export", help="export a trained run for TensorFlow Serving (<home>/models/ranker/<n>/)")
    ex.add_argument("--run", help="run name (default: the latest)")
    ex.set_defaults(func=cmd_export)

    xp = sub.add_parser("explain", help="attention heatmap (PNG) and the history movies behind a score")
    xp.add_argument("--user", type=int, required=True)
    xp.add_argument("--movie", required=True, help="movie id, or several comma-separated")
    xp.add_argument("--out", help="PNG path (default <home>/explain/user-<U>.png)")
    xp.set_defaults(func=cmd_explain)

    red = sub.add_parser("redis", help="the home's embedded redis-server")
    red.add_argument("action", choices=("start", "stop", "status"))
    red.set_defaults(func=cmd_redis)

    conf = sub.add_parser("config", help="show the effective configuration or the commented sample")
    conf.add_argument("action", choices=("show", "sample"))
    conf.set_defaults(func=cmd_config)

    demo = sub.add_parser("demo", help="synthetic data -> batch plane -> Redis, then recall lists for a few users")
    demo.add_argument("--data", help="use this MovieLens directory instead of synthetic data")
    demo.add_argument("--users", type=int, default=6040)
    demo.add_argument("--movies", type=int, default=3883)
    demo.add_argument("--ratings", type=int, default=1_000_209)
    demo.add_argument("--show", type=int, default=3, help="how many users to print")
    demo.add_argument("--k", type=int, default=10)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline import movielens as ml
    from pipeline.evaluate import EvaluationError
    from model.train import TrainingError
    from pipeline.redis_server import RedisUnavailable
    from spark_jobs.batch import BatchError

    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError, ml.DatasetError, EvaluationError, RedisUnavailable, BatchError, TrainingError,
            ValueError,
            FileNotFoundError) as exc:
        if os.environ.get("RECSYS_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

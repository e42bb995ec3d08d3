"""`recsys evaluate`: recall coverage or model quality, as one table (and JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.commands.ui import UsageError, config_from, console, print_table, progress_bar
from pipeline.config import Config
from pipeline.home import Home


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline import evaluate as ev

    cfg = config_from(args)
    if getattr(args, "protocol", None) == "p3":
        report = _evaluate_p3(cfg, args)
    else:
        report = _evaluate_recall(cfg, args) if args.stage == "recall" else _evaluate_model(cfg, args)
    metric_names = list(dict.fromkeys(k for r in report.rows for k in r.metrics))
    rows = [[r.model, r.protocol, *[r.metrics.get(m, "") for m in metric_names], r.seconds] for r in report.rows]
    print_table(f"evaluation ({'P3 replay' if getattr(args, 'protocol', None) == 'p3' else args.stage}) of batch {report.info['batch_version']} ({report.info['users']} users)",
                 ["model", "protocol", *metric_names, "seconds"], rows)
    if args.json:
        ev.write_json(report, Path(args.json))
        console.print(f"wrote {args.json}")
    return 0


def _evaluate_recall(cfg: Config, args: argparse.Namespace):  # noqa: ANN202
    import redis

    from pipeline import evaluate as ev
    from pipeline.redis_server import redis_for_home

    with redis_for_home(cfg) as url, progress_bar() as progress:
        task = progress.add_task("evaluating recall (P1)", total=None)
        client = redis.Redis.from_url(url)
        try:
            return ev.evaluate_recall(cfg, client, k=args.k, max_users=args.max_users,
                                      on_progress=lambda i, n: progress.update(task, completed=i, total=n),
                                      extra_channels=_model_channel(cfg))
        finally:
            client.close()


def _model_channel(cfg: Config):  # noqa: ANN202
    """The gateway's ``next_model`` channel from the newest export's ``next_movies`` signature (None without one)."""
    from model.export import exported_versions, model_base
    from model.signature import NEXT_MOVIES_SIGNATURE

    home = Home(cfg.home)
    versions = exported_versions(home)
    if not versions or cfg.serving.model_recall <= 0:
        return None
    import numpy as np
    import tensorflow as tf

    from model.vocab import left_pad
    from pipeline.recall import MODEL_CHANNEL

    fn = tf.saved_model.load(str(model_base(home) / str(versions[0]))).signatures.get(NEXT_MOVIES_SIGNATURE)
    if fn is None:
        return None
    h = cfg.samples.history_len

    def channel(ctx):  # noqa: ANN001, ANN202
        if not ctx.history:
            return {}
        out = fn(hist_movie_ids=tf.constant(left_pad([[m for m, _, _ in ctx.history]], h, np.int64)))
        got = zip(out["movie_ids"].numpy()[0].tolist(), out["log_prob"].numpy()[0].tolist())
        return {MODEL_CHANNEL: [(m, s) for m, s in got if m not in ctx.exclude][:cfg.serving.model_recall]}

    return channel


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
    run_of: dict[str, str] = {}  # scorer name -> training run (for the training-time column)
    base = model_base(home)
    versions = exported_versions(home)
    if versions:
        fn = mev.saved_model_fn(base / str(versions[0]))
        name = f"ranker (export v{versions[0]})"
        scorers.append(mev.SignatureScorer(name, fn, data, hl, tl))
        run_txt = base / str(versions[0]) / "assets.extra" / "run.txt"
        if run_txt.exists():
            run_of[name] = run_txt.read_text().split()[0]
        if args.cold:
            scorers.append(mev.SignatureScorer(f"{name} [cold user]", fn, data, hl, tl, cold_users=True))
    for run in (args.runs.split(",") if args.runs else []):
        scorers.append(mev.SignatureScorer(f"run {run}", mev.run_fn(runs_dir(home) / run), data, hl, tl))
        run_of[f"run {run}"] = run
    if not scorers and not args.gateway:
        raise UsageError("no exported model (recsys export) and no --runs: nothing to evaluate")
    if not args.no_baselines:
        scorers += mev.baselines(data, home)
    with progress_bar() as progress:
        task = progress.add_task("evaluating", total=None)
        rows = mev.evaluate_scorers(data, scorers, max_users=args.max_users, k=args.k,
                                    on_progress=lambda name, i, n: progress.update(task, description=name, completed=i, total=n))
        if args.cold and versions:
            users = mev.sample_users(data, args.max_users)
            rows.append(mev.cold_movie_row(scorers[0], data, users, k=args.k))
    if args.gateway:
        rows.append(_gateway_row(cfg, data, args))
    report = Report(rows=rows, info={"batch_version": data.version, "users": min(args.max_users or 10**9, len(data.test)),
                                     "protocol": "P1", "catalogue": int(len(data.catalogue.movie_ids))})
    for row in report.rows:
        summary = runs_dir(home) / run_of.get(row.model, "-") / "summary.json"
        if summary.exists():
            row.metrics["train seconds"] = json.loads(summary.read_text())["train_seconds"]
    return report


def _gateway_row(cfg: Config, data, args: argparse.Namespace):  # noqa: ANN001, ANN202
    """The same users through the serving path: a running gateway, or one started here for the home."""
    import contextlib

    import grpc

    from serving.app import serving_stack, wait_for_model
    from serving.evaluate import evaluate_gateway
    from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    with contextlib.ExitStack() as stack:
        if args.gateway == "embedded":
            running = stack.enter_context(serving_stack(cfg.replace("serving", bind="127.0.0.1", grpc_port=0, http_port=0,
                                                                    model_port=0)))
            target = running.grpc_target
            wait_for_model(running)
            leftover = running.store.online_users()
            if leftover:
                console.print(f"[yellow]warning:[/] {leftover} users have stream (online) history in this Redis; "
                              "P1 through the gateway counts it as history (a stream job ran on this evaluation home)")
        else:
            target = args.gateway
        channel = stack.enter_context(grpc.insecure_channel(target))
        with progress_bar() as progress:
            task = progress.add_task(f"P1 through the gateway at {target}", total=None)
            return evaluate_gateway(data, pb_grpc.RecommenderStub(channel), max_users=args.max_users, k=args.k,
                                    on_progress=lambda i, n: progress.update(task, completed=i, total=n))



def _evaluate_p3(cfg: Config, args: argparse.Namespace):  # noqa: ANN202
    from pipeline.evaluate import Report
    from serving.evaluate import evaluate_p3

    home = Home(cfg.home)
    with progress_bar() as progress:
        task = progress.add_task("P3 replay", total=None)
        rows = evaluate_p3(cfg, max_events=args.max_events, k=args.k,
                           on_progress=lambda name, i, n: progress.update(task, description=f"P3 replay, {name}",
                                                                           completed=i, total=n))
    lift = rows[1].metrics[f"HR@{args.k}"] - rows[0].metrics[f"HR@{args.k}"]
    console.print(f"freshness lift (stream on - off): HR@{args.k} {lift:+.4f}")
    return Report(rows=rows, info={"batch_version": home.current_version(), "users": "replayed events",
                                   "protocol": "P3", "events": rows[0].metrics["events"], "lift": round(lift, 4)})

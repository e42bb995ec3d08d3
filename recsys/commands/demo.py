"""`recsys demo`: the whole system on one machine, end to end, with embedded defaults.

synthetic MovieLens (or ``--data``) -> Spark batch plane (split ``p3``: the latest 10%
of the timeline is held back, as live events to come) -> a demo-size ranker trained
and exported -> Redis + model server + gateway -> ``Recommend`` over gRPC with
reasons for a few users -> the Flink stream job started, one user's held-back ratings
replayed through ``RecordRating``, and their list shown before and after.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from recsys.commands.batch import run_batch_with_progress
from recsys.commands.data import ensure_default_data
from recsys.commands.serve import web_address
from recsys.commands.ui import config_from, console, print_table
from pipeline.config import Config
from pipeline.home import Home


def cmd_demo(args: argparse.Namespace) -> int:
    overrides = {"synth": {"users": args.users, "ratings": args.ratings, "movies": args.movies},
                 "data": {"split": "p3"},
                 "model": {"epochs": args.epochs, "max_train_examples": args.train_examples,
                           "sequence_epochs": args.sequence_epochs, "mix_users": 500},
                 # any free ports: a demo must not collide with a `recsys serve` already running
                 "serving": {"bind": "127.0.0.1", "grpc_port": 0, "http_port": 0, "model_port": 0}}
    cfg = config_from(args, overrides)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    data = Path(args.data) if args.data else ensure_default_data(cfg)
    manifest = run_batch_with_progress(cfg, data)
    timings["batch"] = time.perf_counter() - t0
    t = time.perf_counter()
    _train_and_export(cfg)
    timings["train + export"] = time.perf_counter() - t
    t = time.perf_counter()
    _serve_and_show(cfg, manifest["version"], args, timings)
    timings["serving + stream"] = time.perf_counter() - t
    console.print(f"[bold green]demo done in {time.perf_counter() - t0:.0f} s[/] "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}): home {cfg.home}, batch version "
                  f"{manifest['version']}.")
    serve_cfg = config_from(args, {})  # the ports `recsys serve` uses (the demo itself ran on free ones)
    console.print(f"[bold]web:[/] `recsys --home {cfg.home} serve`, then open "
                  f"{web_address(serve_cfg, serve_cfg.serving.http_port)} (sign up, or try the demo as a dataset user)")
    return 0


def _train_and_export(cfg: Config) -> None:
    from model.export import export
    from model.train import latest_run, train

    console.print(f"[bold]training a demo-size ranker[/] ({cfg.model.max_train_examples or 'all'} examples, "
                  f"{cfg.model.epochs} epoch(s); `recsys train` without limits for the full model) ...")
    summary = train(cfg, verbose=0, on_epoch=lambda e, logs: console.print(
        f"  epoch {e + 1}: val_loss {logs.get('val_loss', float('nan')):.4f}"))
    if "sequence" in summary:
        seq = summary["sequence"]
        console.print(f"  next-movie sequence model: {seq['epochs_run']} epoch(s), validation NDCG@10 "
                      f"{seq['best']['val_ndcg@10']}, its share of the score {seq['mix']:g}")
    path = export(Home(cfg.home), latest_run(Home(cfg.home)))
    console.print(f"  trained in {summary['train_seconds']:.0f} s, exported to {path}")


def _serve_and_show(cfg: Config, version: str, args: argparse.Namespace, timings: dict[str, float]) -> None:
    import grpc

    from serving.app import serving_stack, wait_for_model
    from serving.protos.recsys.v1 import recommender_pb2 as pb
    from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    if not args.no_stream:  # a fresh stream for a fresh batch: no spool or checkpoints of an earlier demo
        import shutil

        from pipeline.events import spool_dir

        shutil.rmtree(spool_dir(cfg), ignore_errors=True)
        shutil.rmtree(Home(cfg.home).checkpoints, ignore_errors=True)
    with serving_stack(cfg) as stack:
        model_version = wait_for_model(stack)
        console.print(f"[bold]serving[/]: gRPC {stack.grpc_target}, web {web_address(cfg, stack.http_port)}, "
                      f"model server {stack.model_target} (version {model_version})")
        with grpc.insecure_channel(stack.grpc_target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for user_id in _sample_users(cfg, version, args.show) + [10**9]:
                resp = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=args.k), timeout=10)
                _print_answer(f"Recommend(user_id={user_id}, k={args.k})"
                              + (" - unknown user, cold start" if resp.cold_start else ""), resp)
            if not args.no_stream:
                _stream_part(cfg, version, stack, stub, args)


def _print_answer(title: str, resp: Any) -> None:
    flags = f"model v{resp.model_version or '-'}" + (", DEGRADED" if resp.degraded else "")
    print_table(f"{title} [{flags}]", ["#", "movie", "score", "pred. rating", "reason"],
                [[i + 1, it.title, f"{it.score:.3f}", f"{it.predicted_rating:.2f}", it.reason]
                 for i, it in enumerate(resp.items)])


def _stream_part(cfg: Config, version: str, stack: Any, stub: Any, args: argparse.Namespace) -> None:
    """Start the stream job, replay one user's held-back ratings, show the list before and after."""
    from pipeline.home import table_path
    from serving.protos.recsys.v1 import recommender_pb2 as pb

    import pandas as pd

    from flink_jobs.control import start_stream

    held = pd.read_parquet(table_path(Home(cfg.home), version, "interactions"), filters=[("split", "==", "test")])
    if held.empty:
        console.print("[yellow]no held-back events in this build: stream part skipped")
        return
    counts = held.groupby("user_id").size()
    user_id = int(counts[counts >= 3].index[0] if (counts >= 3).any() else counts.index[0])
    events = held[held["user_id"] == user_id].sort_values(["ts", "line"]).head(args.replay)
    stack.store.clear_online()
    console.print("[bold]starting the stream job[/] (Flink mini-cluster, spool -> Redis) ...")
    job = start_stream(cfg, restore=False)
    try:
        before = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=args.k), timeout=10)
        _print_answer(f"before: Recommend(user_id={user_id})", before)
        titles = []
        for row in events.itertuples():
            stub.RecordRating(pb.RecordRatingRequest(user_id=user_id, movie_id=int(row.movie_id), rating=float(row.rating),
                                                     timestamp=int(row.ts)), timeout=10)
            titles.append(stack.gateway.current_catalog().title(int(row.movie_id)))
        console.print(f"replayed {len(events)} held-back ratings of user {user_id} through RecordRating: "
                      + "; ".join(titles))
        t = time.perf_counter()
        rated = set(events["movie_id"].astype(int))
        job.wait_until_consumed(timeout=300, checkpoint=False)  # the first call also waits for the job to start
        fresh = time.perf_counter() - t
        after = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=args.k), timeout=10)
        _print_answer(f"after: Recommend(user_id={user_id}) - in Redis {fresh:.1f} s after the last RecordRating "
                      "(the first events also wait for the job to start)", after)
        shown_again = rated & {i.movie_id for i in after.items}
        console.print("rated movies in the new list: " + (", ".join(map(str, shown_again)) if shown_again else "none"))
    finally:
        job.stop()


def _sample_users(cfg: Config, version: str, n: int) -> list[int]:
    import pandas as pd

    from pipeline.home import table_path

    uf = pd.read_parquet(table_path(Home(cfg.home), version, "user_features"), columns=["user_id", "n_ratings"])
    return [int(u) for u in uf.sort_values("user_id").iloc[:: max(1, len(uf) // max(n, 1))]["user_id"].head(n)]

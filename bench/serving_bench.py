"""Serving benchmark: open-loop load on the gateway's Recommend and on the model server's Predict alone.

    make bench                                   # part of the bench suite
    python -m bench.serving_bench --rates 5,10,20,40 --seconds 20
    python -m bench.serving_bench --home var     # reuse a home that has a batch publish and an export

Open loop: requests are sent on a fixed schedule (rate R: one every 1/R s) whatever
the answers do, and each latency is measured from the *scheduled* send time, so a
slow server shows up as latency instead of silently lowering the load (no coordinated
omission). Both targets run on the same machine in the same run: Recommend(k=10) with
``serving.candidates`` merged candidates ranked, and Predict with one real request of
the same size built from the same user's features. The gateway's added overhead is
their difference; where its time goes comes from the gateway's own per-stage
histograms (``/metrics``).

Without ``--home`` a bench home is built once under ``bench/.home`` (synthetic 1M
ratings, batch plane, a ranker trained on a 200k-example sample for one epoch:
serving latency depends on the architecture, not on how long it trained) and reused.
Writes bench/results/serving-<time>.json with the machine's description.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import describe, write_result
from pipeline.config import Config, load_config

console = Console()


def ensure_home(home: Path, ratings: int) -> Config:
    """A home with a published batch and an exported model (built once, then reused)."""
    from model.export import export, exported_versions
    from model.train import latest_run, train
    from pipeline.home import Home
    from pipeline.synth import generate
    from spark_jobs.batch import run_batch

    cfg = load_config(home=home, environ={}, overrides={
        "synth": {"ratings": ratings}, "model": {"epochs": 1, "max_train_examples": 200_000}})
    h = Home(cfg.home)
    if h.current_version() is None:
        console.print(f"building the bench home {home} (synthetic data, batch plane) ...")
        generate(cfg.synth, h.synthetic_data)
        run_batch(cfg, h.synthetic_data)
    if not exported_versions(h):
        console.print("training a bench-size ranker (200k examples, 1 epoch) and exporting it ...")
        train(cfg, verbose=0)
        export(h, latest_run(h))
    return cfg


def open_loop(send: Callable[[], Any], rate: float, seconds: float) -> dict[str, Any]:
    """Fire ``send()`` (returns a grpc future) at ``rate``/s for ``seconds``; latency from the scheduled time."""
    n = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    remaining = [n]
    start = time.perf_counter() + 0.05

    def finished(scheduled: float, fut: Any) -> None:
        now = time.perf_counter()
        with lock:
            exc = fut.exception()
            if exc is None:
                latencies.append(now - scheduled)
            else:
                errors.append(str(getattr(exc, "code", lambda: exc)()))
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send().add_done_callback(lambda f, s=scheduled: finished(s, f))
    done.wait(timeout=seconds + 60)
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if len(lat) else (lambda q: None)
    return {"rate": rate, "sent": n, "ok": len(latencies), "errors": len(errors), "error_codes": sorted(set(errors)),
            "achieved_rps": round(len(latencies) / wall, 1), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": round(float(lat.mean()), 2) if len(lat) else None}


def stage_means(http_port: int) -> dict[str, float]:
    """Mean milliseconds per stage from the gateway's Prometheus histograms."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    sums = dict(re.findall(r'recsys_stage_seconds_sum\{stage="(\w+)"\} ([\d.e+-]+)', text))
    counts = dict(re.findall(r'recsys_stage_seconds_count\{stage="(\w+)"\} ([\d.e+-]+)', text))
    return {s: round(float(sums[s]) / float(counts[s]) * 1000, 2) for s in sums if float(counts.get(s, 0)) > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="reuse this home (needs a batch publish and an exported model)")
    parser.add_argument("--ratings", type=int, default=1_000_209, help="size of the bench home's synthetic data")
    parser.add_argument("--rates", default="5,10,20,40", help="request rates to test, per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each rate")
    parser.add_argument("--users", type=int, default=200, help="distinct users cycled through")
    parser.add_argument("--max-batch", type=int, help="model server batching (1 = off); default serving.max_batch")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import grpc
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

    from model.signature import SIGNATURE_NAME, build_request
    from serving.app import serving_stack, wait_for_model
    from serving.protos.recsys.v1 import recommender_pb2 as pb
    from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
    from serving.tensors import to_tensor_proto

    cfg = ensure_home(Path(args.home) if args.home else Path("bench/.home"), args.ratings)
    serving = {"bind": "127.0.0.1", "grpc_port": 0, "http_port": 0, "model_port": 0, "model_timeout_ms": 5000,
               "deadline_ms": 10000}
    if args.max_batch:
        serving["max_batch"] = args.max_batch
    cfg = cfg.replace("serving", **serving)
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {"recommend": [], "predict": []}
    with serving_stack(cfg) as stack:
        wait_for_model(stack)
        gw = stack.gateway
        view = gw.versions.view()
        users = view.store.user_ids(args.users)
        # One real Predict request of the size Recommend sends, for the model-alone runs.
        ctx, feats = view.store.user_context(users[0], history_len=cfg.features.history_len)
        from pipeline.recall import merge

        candidates = merge(ctx, view.store, gw.recall_cfg)
        request = build_request(gw._user_input(users[0], ctx, feats), view.catalog.movie_inputs([c.movie_id for c in candidates]),
                                gw.history_len, gw.title_len)
        preq = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=cfg.serving.model_name,
                                                                          signature_name=SIGNATURE_NAME))
        for name, value in request.items():
            preq.inputs[name].CopyFrom(to_tensor_proto(value))
        n_candidates = len(candidates)
        gw_channel = grpc.insecure_channel(stack.grpc_target)
        model_channel = grpc.insecure_channel(stack.model_target)
        rec_stub = pb_grpc.RecommenderStub(gw_channel)
        pred_stub = prediction_service_pb2_grpc.PredictionServiceStub(model_channel)
        counter = iter(range(10**9))
        send_rec = lambda: rec_stub.Recommend.future(  # noqa: E731
            pb.RecommendRequest(user_id=users[next(counter) % len(users)], k=10), timeout=30)
        send_pred = lambda: pred_stub.Predict.future(preq, timeout=30)  # noqa: E731
        for _ in range(20):  # warm both paths (caches, tf.function traces, connections)
            send_rec().result()
            send_pred().result()
        for rate in rates:
            console.print(f"rate {rate:g}/s: Predict alone ...")
            results["predict"].append(open_loop(send_pred, rate, args.seconds))
            console.print(f"rate {rate:g}/s: Recommend ...")
            results["recommend"].append(open_loop(send_rec, rate, args.seconds))
        stages = stage_means(stack.http_port)
        gw_channel.close()
        model_channel.close()
    result = {"benchmark": "serving", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": describe(), "home": str(cfg.home), "candidates_ranked": n_candidates,
              "seconds_per_rate": args.seconds, "max_batch": cfg.serving.max_batch, **results,
              "stage_mean_ms": stages}
    table = Table(title=f"serving, open loop ({describe()['cores']} cores, {n_candidates} candidates, k=10)")
    for col in ("target", "rate/s", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    for target in ("predict", "recommend"):
        for r in results[target]:
            table.add_row("Predict alone" if target == "predict" else "Recommend", f"{r['rate']:g}",
                          str(r["achieved_rps"]), str(r["p50_ms"]), str(r["p95_ms"]), str(r["p99_ms"]), str(r["errors"]))
    console.print(table)
    overhead = [round(r["p50_ms"] - p["p50_ms"], 2) for r, p in zip(results["recommend"], results["predict"])
                if r["p50_ms"] is not None and p["p50_ms"] is not None]
    result["gateway_overhead_p50_ms"] = overhead
    console.print(f"gateway overhead at p50 (Recommend - Predict), per rate: {overhead} ms; "
                  f"mean per stage: {stages}")
    path = write_result(result, args.out, "serving")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving benchmark: open-loop load from a separate process on Recommend, on Predict alone, and the model floor.

    make bench                                        # part of the bench suite
    python -m bench.serving_bench --rates 50,100,200,400 --seconds 10
    python -m bench.serving_bench --home var          # reuse a home that has a batch publish and an export

Three targets, one request mix, one run:

* **floor**: the exported model called in this process, sequentially, on the very
  requests the gateway would send (no gRPC, no queue): what one model call costs;
* **Predict alone**: those requests through the model server's gRPC API (one
  ``recommend`` call per user: the recall candidates and the model's next movies ranked);
* **Recommend**: the gateway (features, recall, the model call, blend, reasons), cycling
  through every published user (at least 6,040 distinct users: no answer is cached).

``--model-server in-process`` benches the gateway with the model server inside its process
(no Predict-alone target then: there is no model port); ``--max-in-flight``,
``--intra-op-threads``, ``--inter-op-threads`` and ``--max-batch`` override those settings.

The load comes from ``bench/loadgen.py`` in its own process (it never shares a GIL with
the server), open loop: requests leave on a fixed schedule and latency is measured from
the scheduled send time (no coordinated omission). Degraded answers are counted apart
and are not goodput; refusals (RESOURCE_EXHAUSTED) are counted with their own latency.
Per run: p50/p95/p99, goodput, CPU-ms per served request (full or degraded answers; a
refusal costs next to nothing) of the gateway (this process) and of the model server (its
child), their memory. Then an overload run: twice the measured
capacity for ``--burst-seconds``, followed by half the capacity, reporting goodput
during the burst, how fast the excess was answered, and how long latency took to recover.

Without ``--home`` a bench home is built once under ``bench/.home`` (synthetic 1M
ratings, batch plane, a ranker trained on a 200k-example sample for one epoch and the
sequence model for two: serving latency depends on the architecture, not on how long it
trained) and reused. Writes bench/results/serving-<time>.json with the machine's description (``lscpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.loadgen import percentiles, write_requests
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
        "synth": {"ratings": ratings}, "model": {"epochs": 1, "max_train_examples": 200_000, "sequence_epochs": 2}})
    h = Home(cfg.home)
    if h.current_version() is None:
        console.print(f"building the bench home {home} (synthetic data, batch plane) ...")
        generate(cfg.synth, h.synthetic_data)
        run_batch(cfg, h.synthetic_data)
    if not exported_versions(h):
        console.print("training a bench-size ranker (200k examples, 1 epoch; sequence model 2 epochs) and exporting ...")
        train(cfg, verbose=0)
        export(h, latest_run(h))
    return cfg


def stage_means(http_port: int) -> dict[str, float]:
    """Mean milliseconds per stage from the gateway's Prometheus histograms."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    sums = dict(re.findall(r'recsys_stage_seconds_sum\{stage="(\w+)"\} ([\d.e+-]+)', text))
    counts = dict(re.findall(r'recsys_stage_seconds_count\{stage="(\w+)"\} ([\d.e+-]+)', text))
    return {s: round(float(sums[s]) / float(counts[s]) * 1000, 2) for s in sums if float(counts.get(s, 0)) > 0}


class Usage:
    """CPU seconds and resident memory of a set of processes, sampled around a run."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def cpu(self) -> dict[str, float]:
        return {n: sum(p.cpu_times()[:2]) for n, p in self.procs.items()}

    def rss_mib(self) -> dict[str, float]:
        return {n: round(p.memory_info().rss / 2**20, 1) for n, p in self.procs.items()}


def loadgen(target: str, kind: str, phases: list[tuple[float, float]], source: Path, deadline: float) -> dict:
    """One run of bench/loadgen.py in its own process; its JSON summary."""
    flag = "--users-file" if kind == "recommend" else "--request-file"
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", target, "--kind", kind, "--deadline", str(deadline),
           "--phases", ",".join(f"{r:g}:{t:g}" for r, t in phases), flag, str(source)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=sum(t for _, t in phases) + deadline + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(usage: Usage, target: str, kind: str, phases: list[tuple[float, float]], source: Path,
             deadline: float) -> dict:
    """A load-generator run with the servers' CPU-ms per answered request and memory added."""
    before = usage.cpu()
    r = loadgen(target, kind, phases, source, deadline)
    after = usage.cpu()
    served = max(1, r["ok"] + r["degraded"])  # answers that did the work (a refusal costs next to nothing)
    r["cpu_ms_per_request"] = {n: round((after[n] - before[n]) * 1000 / served, 2) for n in after}
    r["rss_mib"] = usage.rss_mib()
    return r


FLOOR_REQUESTS = 300  # the in-process floor runs a sample of the Predict requests (x3 rounds)


def floor(model_dir: Path, requests: list[tuple[str, dict[str, np.ndarray]]], rounds: int = 3) -> dict:
    """The exported model called in-process and sequentially on ``requests`` ((signature, inputs) pairs):
    latency and CPU per call."""
    import tensorflow as tf

    from serving.tensors import from_tensor_proto, to_tensor_proto

    signatures = tf.saved_model.load(str(model_dir)).signatures
    calls = []
    for name, r in requests:
        fn = signatures[name]
        specs = fn.structured_input_signature[1]
        calls.append((fn, {k: tf.constant(from_tensor_proto(to_tensor_proto(v)), dtype=specs[k].dtype)
                           for k, v in r.items()}))
    for fn, t in calls[:20]:
        fn(**t)
    times: list[float] = []
    cpu0 = time.process_time()
    for _ in range(rounds):
        for fn, t in calls:
            t0 = time.perf_counter()
            fn(**t)
            times.append(time.perf_counter() - t0)
    return {"signatures": sorted({name for name, _ in requests}), "calls": len(times), **percentiles(times),
            "cpu_ms_per_call": round((time.process_time() - cpu0) * 1000 / len(times), 2)}


def rank_requests(stack: Any, users: list[int]) -> tuple[list[tuple[str, dict[str, np.ndarray]]], dict[str, float]]:
    """(the model request the gateway's Recommend sends for each user as (signature, inputs), mean counts).

    The gateway's own steps: with history and an export that has ``recommend``, the other channels' fused
    candidates (``Gateway.sent_in_one_call``) in one ``recommend`` call; otherwise the merged list
    (``Gateway.candidates``, the model's next movies included) through ``rank_ids`` where the gateway would use it
    (probed through its own client), else ``serving_default`` with every candidate's features. The counts: the
    merged candidates Recommend ranks, and the rows the model scores for them.
    """
    from model.signature import (RANK_IDS_SIGNATURE, RECOMMEND_SIGNATURE, SIGNATURE_NAME, build_request,
                                 build_user_request)
    from pipeline import keys as K
    from pipeline import recall as R

    gw = stack.gateway
    view = gw.versions.view()
    batch = K.batch_version_of(view.store.version)
    H = gw.history_len
    probe: dict[str, bool] = {}  # does rank_ids answer for this version (asked once)

    def full(user: Any, ids: list[int]) -> dict[str, np.ndarray]:
        return build_request(user, view.catalog.movie_inputs(ids), H, gw.title_len)

    out, merged, rows = [], [], []
    for uid in users:
        ctx, feats = view.store.user_context(uid, history_len=gw.cfg.features.history_len)
        user = gw._user_input(uid, ctx, feats)
        per_channel = gw._channels(view, ctx)
        if gw._with_model_channel(ctx) and gw.cfg.serving.precomputed_candidates:
            sent = gw.sent_in_one_call(per_channel)
            req = {**build_user_request(user, H), "movie_ids": np.asarray([sent], np.int64)}
            got = gw.ranking.recommend(build_user_request(user, H), req["movie_ids"], batch,
                                       lambda: full(user, sent), timeout_s=30)
            if got is not None:
                per_channel[R.MODEL_CHANNEL] = gw._model_channel(view, ctx, got.next_movies, ())
                out.append((RECOMMEND_SIGNATURE, req))
                merged.append(len(gw._fuse(per_channel)))
                # the graph ranks each movie once (a next movie among the sent ones takes their row)
                rows.append(len(set(sent) | {m for m, _ in got.next_movies}))
                continue
        ids = [c.movie_id for c in gw.candidates(view, ctx)]
        if "ids" not in probe:
            fell_back: list[int] = []
            gw.ranking.rank_ids(build_user_request(user, H), np.asarray([ids], np.int64), batch,
                                lambda: fell_back.append(1) or full(user, ids), timeout_s=30)
            probe["ids"] = gw.cfg.serving.precomputed_candidates and not fell_back
        out.append((RANK_IDS_SIGNATURE, {**build_user_request(user, H), "movie_ids": np.asarray([ids], np.int64)})
                   if probe["ids"] else (SIGNATURE_NAME, full(user, ids)))
        merged.append(len(ids))
        rows.append(len(ids))
    return out, {"candidates_merged_mean": round(float(np.mean(merged)), 1),
                 "rows_scored_mean": round(float(np.mean(rows)), 1)}


def to_predict(requests: list[tuple[str, dict[str, np.ndarray]]], model_name: str) -> list[Any]:
    from tensorflow_serving.apis import model_pb2, predict_pb2

    from serving.tensors import to_tensor_proto

    out = []
    for signature, r in requests:
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        for name, value in r.items():
            req.inputs[name].CopyFrom(to_tensor_proto(value))
        out.append(req)
    return out


def overload(timeline: list[list], burst_s: float, threshold_ms: float) -> dict[str, Any]:
    """From a burst-then-light run's timeline: goodput in the burst, and when latency came back under threshold."""
    in_burst = [t for t in timeline if t[0] < burst_s]
    after = [t for t in timeline if t[0] >= burst_s]
    late = [t[0] for t in after if t[2] != "ok" or t[1] * 1000 > threshold_ms]
    excess = [t[1] for t in in_burst if t[2] != "ok"]
    return {"burst_goodput_rps": round(sum(1 for t in in_burst if t[2] == "ok") / burst_s, 1),
            "burst_not_ok": len(excess), "burst_not_ok_p99_ms": percentiles(excess)["p99_ms"],
            "recovered_after_s": round(max(late) - burst_s, 2) if late else 0.0, "recovery_threshold_ms": threshold_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="reuse this home (needs a batch publish and an exported model)")
    parser.add_argument("--ratings", type=int, default=1_000_209, help="size of the bench home's synthetic data")
    parser.add_argument("--rates", default="50,100,200,400", help="request rates to test, per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--burst-seconds", type=float, default=30.0, help="the 2x-capacity overload run (0 = skip)")
    parser.add_argument("--users", type=int, default=6040, help="distinct users cycled through (at least 6,040)")
    parser.add_argument("--deadline", type=float, default=2.0, help="each call's deadline, seconds")
    parser.add_argument("--max-batch", type=int, help="model server batching (1 = off); default serving.max_batch")
    parser.add_argument("--batch-timeout-ms", type=float, help="model server batching wait; default serving.batch_timeout_ms")
    parser.add_argument("--intra-op-threads", type=int, help="model server TensorFlow intra-op threads")
    parser.add_argument("--inter-op-threads", type=int, help="model server TensorFlow inter-op threads")
    parser.add_argument("--max-in-flight", type=int, help="gateway admission bound; default serving.grpc_max_in_flight")
    parser.add_argument("--model-server", default="",
                        help="'in-process': the model server inside the gateway (no Predict-alone target then, "
                             "there is no model port); default: the embedded child process")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    from model.export import exported_versions, model_base
    from pipeline.home import Home
    from serving.app import serving_stack, wait_for_model

    cfg = ensure_home(Path(args.home) if args.home else Path("bench/.home"), args.ratings)
    serving = {"bind": "127.0.0.1", "grpc_port": 0, "http_port": 0, "model_port": 0,
               "model_server": args.model_server}
    if args.max_batch:
        serving["max_batch"] = args.max_batch
    if args.batch_timeout_ms is not None:
        serving["batch_timeout_ms"] = args.batch_timeout_ms
    if args.intra_op_threads is not None:
        serving["model_intra_op_threads"] = args.intra_op_threads
    if args.inter_op_threads is not None:
        serving["model_inter_op_threads"] = args.inter_op_threads
    if args.max_in_flight:
        serving["grpc_max_in_flight"] = args.max_in_flight
    cfg = cfg.replace("serving", **serving)
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {"recommend": [], "predict": []}
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    with serving_stack(cfg) as stack:
        wait_for_model(stack)
        view = stack.gateway.versions.view()
        users = view.store.user_ids(10**9)
        if len(users) < args.users:
            console.print(f"[yellow]only {len(users)} users are published (asked for {args.users})[/]")
        random.Random(7).shuffle(users)
        users = users[:max(args.users, 1)]
        (work / "users.txt").write_text("\n".join(map(str, users)))
        console.print(f"ranking requests of {len(users):,} users (the gateway's own candidates) ...")
        requests, counts = rank_requests(stack, users)
        signatures = sorted({name for name, _ in requests})
        write_requests(work / "predict.bin", to_predict(requests, cfg.serving.model_name))
        model_dir = model_base(Home(cfg.home), cfg.serving.model_name) / str(exported_versions(Home(cfg.home))[0])
        sample = requests[:FLOOR_REQUESTS]
        console.print(f"floor: the model in-process on {len(sample)} of those requests ({', '.join(signatures)}) ...")
        results["floor"] = floor(model_dir, sample)
        child = stack.extras["model"]
        usage = Usage({"gateway": os.getpid(), **({"model_server": child.process.pid} if child else {})})
        targets = ([("predict", stack.model_target, work / "predict.bin")] if child else []) + [
            ("recommend", stack.grpc_target, work / "users.txt")]
        for kind, target, source in targets:
            loadgen(target, kind, [(20.0, 2.0)], source, args.deadline)  # warm-up: connections, traces, caches
        for rate in rates:
            for kind, target, source in targets:
                console.print(f"rate {rate:g}/s: {kind} ...")
                r = measured(usage, target, kind, [(rate, args.seconds)], source, args.deadline)
                r.pop("timeline")
                results[kind].append(r)
        capacity = max(r["goodput_rps"] for r in results["recommend"])
        if args.burst_seconds > 0 and capacity > 0:
            base = min(results["recommend"], key=lambda r: r["rate"])
            threshold = max(50.0, 2 * (base["p99_ms"] or 0))
            console.print(f"overload: {2 * capacity:g}/s (2x the measured capacity) for {args.burst_seconds:g} s, "
                          f"then {capacity / 2:g}/s ...")
            r = measured(usage, stack.grpc_target, "recommend",
                         [(2 * capacity, args.burst_seconds), (capacity / 2, 10.0)], work / "users.txt", args.deadline)
            timeline = r.pop("timeline")
            results["overload"] = {"capacity_rps": capacity, "offered_rps": 2 * capacity, **r,
                                   **overload(timeline, args.burst_seconds, threshold)}
        stages = stage_means(stack.http_port)
    result = {"benchmark": "serving", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": describe(), "home": str(cfg.home), **counts,
              "rank_signatures": signatures, "distinct_users": len(users), "seconds_per_rate": args.seconds,
              "deadline_s": args.deadline, "max_batch": cfg.serving.max_batch,
              "batch_timeout_ms": cfg.serving.batch_timeout_ms,
              "model_server": cfg.serving.model_server or "embedded child process",
              "model_intra_op_threads": cfg.serving.model_intra_op_threads,
              "model_inter_op_threads": cfg.serving.model_inter_op_threads,
              "grpc_max_in_flight": cfg.serving.grpc_max_in_flight, **results, "stage_mean_ms": stages}
    f = results["floor"]
    table = Table(title=f"serving, open loop from a separate process ({describe()['cores']} cores, "
                        f"~{counts['candidates_merged_mean']:g} candidates ranked ({counts['rows_scored_mean']:g} rows scored), {len(users)} users, k=10); "
                        f"floor p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms")
    for col in ("target", "offered/s", "goodput/s", "p50 ms", "p99 ms", "degraded", "errors", "gw CPU-ms",
                "model CPU-ms"):
        table.add_column(col, justify="right")
    for target in ("predict", "recommend"):
        for r in results[target]:
            cpu = r["cpu_ms_per_request"]
            table.add_row("Predict alone" if target == "predict" else "Recommend", f"{r['rate']:g}",
                          str(r["goodput_rps"]), str(r["p50_ms"]), str(r["p99_ms"]), str(r["degraded"]),
                          str(sum(r["errors"].values())), str(cpu["gateway"]), str(cpu.get("model_server", "-")))
    console.print(table)
    overhead = [round(r["p50_ms"] - p["p50_ms"], 2) for r, p in zip(results["recommend"], results["predict"])
                if r["p50_ms"] is not None and p["p50_ms"] is not None]
    result["gateway_overhead_p50_ms"] = overhead
    console.print(f"gateway overhead at p50 (Recommend - Predict), per rate: {overhead} ms; mean per stage: {stages}")
    if "overload" in results:
        o = results["overload"]
        console.print(f"overload: capacity {o['capacity_rps']}/s, offered {o['offered_rps']}/s -> goodput "
                      f"{o['burst_goodput_rps']}/s in the burst; {o['burst_not_ok']} excess answered, p99 "
                      f"{o['burst_not_ok_p99_ms']} ms; recovered {o['recovered_after_s']} s after it")
    path = write_result(result, args.out, "serving")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

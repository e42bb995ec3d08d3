"""Open-loop gRPC load from its own process: the benchmarks' client, never sharing a GIL with a server.

    python -m bench.loadgen --target 127.0.0.1:50051 --kind recommend --rate 200 --seconds 10 \
        --users-file users.txt                                   # Recommend(k=10), users cycled
    python -m bench.loadgen --target 127.0.0.1:8500 --kind predict --rate 200 --seconds 10 \
        --request-file predict.bin                               # PredictRequests (write_requests), cycled
    python -m bench.loadgen ... --phases 400:30,100:10           # a burst, then a lighter load (recovery)

Requests leave on a fixed schedule (one every 1/rate s) whatever the answers do, and each
latency is measured from its *scheduled* send time, so a server that falls behind shows
up as latency rather than as a quietly lower load (no coordinated omission). Answers are
counted apart: ``ok`` (full answers), ``degraded`` (Recommend answered with
``degraded=true``: not goodput), and errors by status code, with the latency of refusals
(RESOURCE_EXHAUSTED) on their own, since overload must be refused fast. Prints one JSON
object on stdout; the caller (``bench/serving_bench.py``) runs one process per rate.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def percentiles(values_s: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds (None when empty)."""
    if not values_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(values_s) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)} | {"max_ms": round(float(ms.max()), 2)}


def write_requests(path: Path, requests: list[Any]) -> None:
    """Protobuf messages into one file, each prefixed by its 4-byte little-endian length (``read_requests``)."""
    with open(path, "wb") as f:
        for r in requests:
            data = r.SerializeToString()
            f.write(len(data).to_bytes(4, "little") + data)


def read_requests(path: Path) -> list[bytes]:
    raw, out, at = Path(path).read_bytes(), [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        out.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return out


def schedule(phases: list[tuple[float, float]]) -> list[float]:
    """Send offsets in seconds for consecutive (rate, seconds) phases."""
    times, t0 = [], 0.0
    for rate, seconds in phases:
        n = max(1, int(rate * seconds))
        times += [t0 + i / rate for i in range(n)]
        t0 += seconds
    return times


def run(send: Callable[[int], Any], is_degraded: Callable[[Any], bool], phases: list[tuple[float, float]],
        deadline_s: float) -> dict[str, Any]:
    """Fire ``send(i)`` (a gRPC future) on the phases' schedule; the summary described in the module doc."""
    offsets = schedule(phases)
    n = len(offsets)
    seconds = sum(s for _, s in phases)
    lock = threading.Lock()
    done = threading.Event()
    ok: list[float] = []
    degraded: list[float] = []
    refused: list[float] = []
    errors: dict[str, int] = {}
    left = [n]
    timeline: list[tuple[float, float, str]] = []  # (scheduled offset s, latency s, outcome)
    start = time.perf_counter() + 0.05
    cpu0 = time.process_time()

    def finished(scheduled: float, fut: Any) -> None:
        latency = time.perf_counter() - scheduled
        exc = fut.exception()
        with lock:
            if exc is None:
                outcome = "degraded" if is_degraded(fut.result()) else "ok"
                (degraded if outcome == "degraded" else ok).append(latency)
            else:
                outcome = exc.code().name if hasattr(exc, "code") else type(exc).__name__
                errors[outcome] = errors.get(outcome, 0) + 1
                if outcome == "RESOURCE_EXHAUSTED":
                    refused.append(latency)
            timeline.append((scheduled - start, latency, outcome))
            left[0] -= 1
            if left[0] == 0:
                done.set()

    late = 0
    for i, offset in enumerate(offsets):
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.01:
            late += 1  # the generator itself fell behind its schedule (reported: the run is then suspect)
        send(i).add_done_callback(lambda f, s=scheduled: finished(s, f))
    done.wait(timeout=seconds + deadline_s + 30)
    wall = max(time.perf_counter() - start, seconds)
    with lock:
        return {"rate": phases[0][0], "seconds": seconds, "phases": phases, "sent": n, "ok": len(ok), "degraded": len(degraded),
                "errors": dict(sorted(errors.items())), "unanswered": left[0],
                "goodput_rps": round(len(ok) / wall, 1), "answered_rps": round((n - left[0]) / wall, 1),
                **percentiles(ok), "refused_p99_ms": percentiles(refused)["p99_ms"],
                "degraded_p99_ms": percentiles(degraded)["p99_ms"],
                "client_late_sends": late, "client_cpu_s": round(time.process_time() - cpu0, 3),
                "client_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "timeline": [(round(a, 4), round(b, 5), c) for a, b, c in timeline]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the gateway (recommend) or model server (predict)")
    parser.add_argument("--kind", choices=("recommend", "predict"), required=True)
    parser.add_argument("--rate", type=float, help="requests per second (one phase)")
    parser.add_argument("--seconds", type=float, help="duration of that phase")
    parser.add_argument("--phases", help="rate:seconds,rate:seconds,... instead of --rate/--seconds")
    parser.add_argument("--deadline", type=float, default=2.0, help="each call's gRPC deadline, seconds")
    parser.add_argument("--users-file", help="recommend: one user id per line, cycled in order")
    parser.add_argument("--request-file", help="predict: a serialised tensorflow.serving.PredictRequest")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        phases = [(float(r), float(t)) for r, t in (p.split(":") for p in args.phases.split(","))] if args.phases \
            else [(float(args.rate), float(args.seconds))]
    except (TypeError, ValueError):
        parser.error("give --rate and --seconds, or --phases rate:seconds,...")
    if any(r <= 0 or t <= 0 for r, t in phases):
        parser.error("rates and durations must be positive")

    import grpc

    channel = grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                          ("grpc.max_send_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    if args.kind == "recommend":
        from serving.protos.recsys.v1 import recommender_pb2 as pb
        from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

        if not args.users_file:
            parser.error("--kind recommend needs --users-file")
        users = [int(line) for line in Path(args.users_file).read_text().split()]
        stub = pb_grpc.RecommenderStub(channel)
        requests = [pb.RecommendRequest(user_id=u, k=args.k) for u in users]
        send = lambda i: stub.Recommend.future(requests[i % len(requests)], timeout=args.deadline)  # noqa: E731
        is_degraded = lambda resp: bool(resp.degraded)  # noqa: E731
        distinct = len(set(users))
    else:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        if not args.request_file:
            parser.error("--kind predict needs --request-file")
        preqs = [predict_pb2.PredictRequest.FromString(b) for b in read_requests(Path(args.request_file))]
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        send = lambda i: stub.Predict.future(preqs[i % len(preqs)], timeout=args.deadline)  # noqa: E731
        is_degraded = lambda resp: False  # noqa: E731
        distinct = len(preqs)
    result = run(send, is_degraded, phases, args.deadline)
    result.update(kind=args.kind, target=args.target, distinct_users=distinct)
    channel.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

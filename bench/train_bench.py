"""Training benchmark: the wall time of `recsys train` with its defaults on a 1M-rating set (bound: 20 min).

    make bench                       # or: python -m bench.train_bench
    python -m bench.train_bench --data DIR      # a real MovieLens folder instead of synthetic data
    python -m bench.train_bench --users 600 --ratings 60000   # a quick run

Synthesises an ML-1M-shaped set (or reads ``--data``), builds a P1 batch version in a temp home, then times
the command a user runs, ``recsys --home H train``, in its own process (TensorFlow start-up included). Writes
bench/results/train-<time>.json: wall seconds, each model's epochs and seconds, whether the time budget
stopped it, peak memory, and the machine. Not part of `make test`: no test asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.machine import describe, write_result
from pipeline.config import load_config
from pipeline.synth import generate

BOUND_SECONDS = 20 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--movies", type=int, default=3883)
    parser.add_argument("--ratings", type=int, default=1_000_209)
    parser.add_argument("--data", help="a MovieLens folder (any layout `recsys batch` reads) instead of synthetic data")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    console = Console()
    from spark_jobs.batch import run_batch

    with tempfile.TemporaryDirectory(prefix="recsys-train-bench-") as tmp:
        home = Path(tmp) / "home"
        cfg = load_config(home=home, environ={}, overrides={
            "synth": {"users": args.users, "movies": args.movies, "ratings": args.ratings}, "data": {"split": "p1"}})
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            console.print(f"synthesising {args.ratings:,} ratings ...")
            generate(cfg.synth, data)
        console.print("batch (P1 split) ...")
        t0 = time.perf_counter()
        manifest = run_batch(cfg, data, on_step=lambda n, phase, r: console.print(f"  {n}: {phase}")
                             if phase == "start" else None)
        batch_s = time.perf_counter() - t0
        console.print("recsys train (defaults) ...")
        t1 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "recsys", "--home", str(home), "train"], text=True)
        train_s = time.perf_counter() - t1
        if proc.returncode != 0:
            console.print(f"[red]recsys train failed (exit {proc.returncode})")
            return 1
        run = (home / "models" / "runs" / "LATEST").read_text().strip()
        summary = json.loads((home / "models" / "runs" / run / "summary.json").read_text())
    seq = summary.get("sequence", {})
    result = {
        "benchmark": "train", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": describe(),
        "dataset": {"source": args.data or "synthetic", "ratings": manifest["steps"]["prepare"].get("rows"),
                    "train_examples": summary["train_examples"]},
        "batch_seconds": round(batch_s, 1), "train_command_seconds": round(train_s, 1),
        "bound_seconds": BOUND_SECONDS, "within_bound": train_s <= BOUND_SECONDS,
        "ranker": {"epochs": summary["epochs_run"], "epoch_examples": summary.get("epoch_examples"),
                   "seconds": summary["train_seconds"] - seq.get("train_seconds", 0.0),
                   "stopped_by_budget": summary.get("stopped_by_budget")},
        "rating_prior": summary.get("rating_prior"),
        "sequence": {"epochs": seq.get("epochs_run"), "seconds": seq.get("train_seconds"),
                     "stopped_by_budget": seq.get("stopped_by_budget"), "best": seq.get("best"), "mix": seq.get("mix")},
        "children_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    table = Table(title=f"recsys train on {result['dataset']['ratings']:,} ratings ({describe()['cores']} cores)")
    table.add_column("part")
    table.add_column("value", justify="right")
    table.add_row("ranker", f"{result['ranker']['epochs']} epochs of {result['ranker']['epoch_examples']:,} examples, "
                  f"{result['ranker']['seconds']:.0f} s")
    if summary.get("rating_prior"):
        table.add_row("rating prior (biased MF)", f"{summary['rating_prior'].get('seconds', 0):.0f} s")
    table.add_row("next-movie model", f"{seq.get('epochs_run')} epochs, {seq.get('train_seconds', 0):.0f} s")
    table.add_row("[bold]recsys train (wall)", f"[bold]{train_s:.0f} s (bound {BOUND_SECONDS} s)")
    console.print(table)
    path = write_result(result, args.out, "train")
    console.print(f"wrote {path}")
    return 0 if result["within_bound"] else 2


if __name__ == "__main__":
    raise SystemExit(main())

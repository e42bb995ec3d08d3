"""Batch-plane benchmark: each Spark job's wall time on a synthetic 1M-rating set.

    make bench                       # or: python -m bench.batch_bench --ratings 1000209
    python -m bench.batch_bench --users 600 --ratings 60000   # a quick run

Prints a table and writes bench/results/batch-<time>.json with the machine's description.
Not part of `make test`: no test asserts a duration.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.machine import describe, write_result
from pipeline.config import load_config
from pipeline.synth import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--movies", type=int, default=3883)
    parser.add_argument("--ratings", type=int, default=1_000_209)
    parser.add_argument("--split", choices=("none", "p1"), default="none")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    console = Console()
    from spark_jobs.batch import run_batch

    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        cfg = load_config(home=Path(tmp) / "home", environ={}, overrides={
            "synth": {"users": args.users, "movies": args.movies, "ratings": args.ratings},
            "data": {"split": args.split}})
        t0 = time.perf_counter()
        summary = generate(cfg.synth, Path(tmp) / "data")
        synth_s = time.perf_counter() - t0
        steps: dict[str, float] = {}
        t1 = time.perf_counter()
        manifest = run_batch(cfg, Path(tmp) / "data",
                             on_step=lambda n, phase, r: console.print(f"  {n}: {phase}") if phase == "start" else None)
        total = time.perf_counter() - t1
        for name, result in manifest["steps"].items():
            steps[name] = result["seconds"]
    result = {
        "benchmark": "batch", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": describe(),
        "dataset": {"users": args.users, "movies": args.movies, "ratings": summary.n_ratings, "split": args.split},
        "synth_seconds": round(synth_s, 2), "batch_seconds": round(total, 2), "step_seconds": steps,
        "ratings_per_second": round(summary.n_ratings / total, 1),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    table = Table(title=f"batch plane on {summary.n_ratings:,} ratings ({describe()['cores']} cores)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_row("synthesise data", f"{synth_s:.1f}")
    for name, sec in steps.items():
        table.add_row(name, f"{sec:.1f}")
    table.add_row("[bold]batch total", f"[bold]{total:.1f}")
    console.print(table)
    path = write_result(result, args.out, "batch")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

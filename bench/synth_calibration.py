"""Behaviour profile of datasets: the baselines' full HR@10 under P1 and their ratios to popularity.

    python -m bench.synth_calibration DIR [DIR ...]      # real MovieLens dirs and/or synthetic ones
    python -m bench.synth_calibration --synthetic '{"users": 943, "movies": 1682, "ratings": 100000}'

How the synthetic generator was calibrated (docs/architecture.md, "Synthetic data calibration"): its
default set must show the ratios of transition, EASE and item-kNN to popularity that the real development
sets show, within 20 %. Prints a table and writes bench/results/synth-calibration-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.machine import describe
from model.baselines import behaviour_profile
from pipeline.config import SynthConfig
from pipeline.movielens import read_table
from pipeline.synth import generate


def profile_dir(directory: str | Path) -> dict[str, float]:
    ratings, _ = read_table(directory, "ratings")
    return behaviour_profile(ratings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="MovieLens directories (any layout recsys batch reads)")
    parser.add_argument("--synthetic", action="append", default=[],
                        help="JSON of SynthConfig knobs; generated into a temporary directory ('{}' = defaults)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if not args.dirs and not args.synthetic:
        parser.error("name at least one directory or --synthetic")
    console = Console()
    rows: list[dict[str, object]] = []
    for directory in args.dirs:
        t0 = time.perf_counter()
        rows.append({"data": directory, "hr@10": profile_dir(directory), "seconds": round(time.perf_counter() - t0, 1)})
    for spec in args.synthetic:
        t0 = time.perf_counter()
        knobs = json.loads(spec)
        with tempfile.TemporaryDirectory() as tmp:
            generate(SynthConfig(**knobs), Path(tmp) / "data")
            rows.append({"data": f"synthetic {json.dumps(knobs)}", "hr@10": profile_dir(Path(tmp) / "data"),
                         "seconds": round(time.perf_counter() - t0, 1)})
    table = Table(title="full HR@10 under P1 (ratio to popularity)")
    for column in ("data", "popularity", "item-knn", "transition", "ease", "seconds"):
        table.add_column(column)
    for row in rows:
        hr = row["hr@10"]
        pop = hr["popularity"] or float("nan")
        table.add_row(str(row["data"]), f"{hr['popularity']:.4f}",
                      *(f"{hr[b]:.4f} ({hr[b] / pop:.2f}x)" for b in ("item-knn", "transition", "ease")),
                      str(row["seconds"]))
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"synth-calibration-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))
    console.print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

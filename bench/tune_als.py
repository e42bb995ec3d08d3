"""ALS tuning for recall: coverage of the held-out (P1 test) movie in each user's ALS top-N.

    recsys batch --split p1 && python -m bench.tune_als --home var

Recall cares about whether the right movie is *among* N candidates, not about rating
error, so this measures exactly that for a small grid (implicit vs explicit, rank,
regularisation, alpha) and writes bench/results/als-tuning-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.machine import describe
from pipeline.config import load_config
from pipeline.home import Home, table_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="var")
    parser.add_argument("--top-n", type=int, default=200)
    parser.add_argument("--grid", help='JSON list of parameter sets, e.g. \'[{"als_rank": 32, "als_reg": 0.5}]\'')
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    console = Console()
    cfg = load_config(home=args.home)
    home = Home(cfg.home)
    version = home.current_version()
    if version is None or home.read_manifest(version).get("split") != "p1":
        raise SystemExit("needs a P1 build: run `recsys batch --split p1` first")
    from spark_jobs.recall import als_user_lists, fit_als
    from spark_jobs.session import get_spark

    spark = get_spark(cfg)
    inter = spark.read.parquet(str(table_path(home, version, "interactions")))
    fit = inter.where("split = 'train'").cache()
    history = inter.where("split != 'test'")
    test = pd.read_parquet(table_path(home, version, "heldout"), columns=["user_id", "test_movie"]).set_index("user_id")
    grid = [dict(als_implicit=True, als_rank=rank, als_reg=0.05, als_alpha=20.0) for rank in (32, 64, 128)]
    grid += [dict(als_implicit=True, als_rank=64, als_reg=0.5, als_alpha=20.0)]
    grid += [dict(als_implicit=True, als_rank=64, als_reg=0.05, als_alpha=a) for a in (5.0, 60.0)]
    grid += [dict(als_implicit=False, als_rank=64, als_reg=0.1, als_alpha=1.0)]
    if args.grid:
        grid = json.loads(args.grid)
    rows = []
    for params in grid:
        c = cfg.replace("recall", **params)
        t0 = time.perf_counter()
        model = fit_als(fit, c)
        lists = als_user_lists(spark, model, history, args.top_n).toPandas().set_index("user_id")
        hits = [int(test.loc[u, "test_movie"]) in set(items) for u, items in lists["items"].items() if u in test.index]
        hits10 = [int(test.loc[u, "test_movie"]) in set(items[:10]) for u, items in lists["items"].items() if u in test.index]
        rows.append({**params, f"coverage@{args.top_n}": round(sum(hits) / len(hits), 4),
                     "HR@10": round(sum(hits10) / len(hits10), 4), "seconds": round(time.perf_counter() - t0, 1)})
        console.print(rows[-1])
    table = Table(title=f"ALS for recall, P1 test movie in top-{args.top_n} ({len(test)} users)")
    for col in rows[0]:
        table.add_column(col)
    for r in sorted(rows, key=lambda r: -r[f"coverage@{args.top_n}"]):
        table.add_row(*[str(v) for v in r.values()])
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"als-tuning-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"machine": describe(), "batch_version": version, "rows": rows}, indent=2))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

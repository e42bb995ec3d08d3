"""The batch plane's one entry point: ``spark_jobs/main.py <step>`` runs one step and prints its summary.

This is what ``spark-submit`` runs (``deploy/spark-submit.sh`` wraps it with the
project's packages as ``--py-files``)::

    spark-submit --master spark://host:7077 spark_jobs/main.py recall --home /data/recsys --version v2026...
    spark-submit spark_jobs/main.py ingest --home var --data path/to/ml-1m

The steps themselves (``spark_jobs/<step>.py``) are library modules with a ``run``
function and no entry point of their own; ``spark_jobs.batch`` runs them in order.
The summary is one JSON object on stdout: ``{"version": ..., "<step>": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import load_config
from spark_jobs.batch import STEPS, BatchError, run_batch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark_jobs/main.py", description="Run one batch step.")
    parser.add_argument("step", choices=STEPS, help="the batch step to run")
    parser.add_argument("--home", help="recsys home (default $RECSYS_HOME or ./var)")
    parser.add_argument("--config", help="recsys.toml (default <home>/recsys.toml)")
    parser.add_argument("--version", help="batch version to write into (default: a new one, ingest only)")
    parser.add_argument("--data", help="MovieLens directory (ingest)")
    parser.add_argument("--split", choices=("none", "p1", "p2"), help="override data.split")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"data": {"split": args.split}} if args.split else None
    cfg = load_config(home=args.home, config_file=args.config, overrides=overrides)
    try:
        manifest = run_batch(cfg, Path(args.data) if args.data else None, steps=[args.step], version=args.version)
    except BatchError as exc:  # e.g. another batch holds the home: one clear line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json.dump({"version": manifest["version"], args.step: manifest["steps"][args.step]}, sys.stdout, indent=2,
              default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``spark-submit spark_jobs/<job>.py`` entry: parse flags, run one step, print its summary.

Example::

    spark-submit --master spark://host:7077 spark_jobs/recall.py --home /data/recsys --version v2026...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import load_config


def job_main(step: str, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"spark_jobs/{step}.py", description=f"Run the '{step}' batch step.")
    parser.add_argument("--home", help="recsys home (default $RECSYS_HOME or ./var)")
    parser.add_argument("--config", help="recsys.toml (default <home>/recsys.toml)")
    parser.add_argument("--version", help="batch version to write into (default: a new one, ingest only)")
    parser.add_argument("--data", help="MovieLens directory (ingest)")
    parser.add_argument("--split", choices=("none", "p1", "p2"), help="override data.split")
    args = parser.parse_args(argv)
    overrides = {"data": {"split": args.split}} if args.split else None
    cfg = load_config(home=args.home, config_file=args.config, overrides=overrides)
    from spark_jobs.batch import run_batch

    manifest = run_batch(cfg, Path(args.data) if args.data else None, steps=[step], version=args.version)
    json.dump({"version": manifest["version"], step: manifest["steps"][step]}, sys.stdout, indent=2, default=str)
    print()

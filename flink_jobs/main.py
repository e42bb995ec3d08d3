"""The stream plane's one entry point: the rating-features job, run locally or submitted to a cluster.

Everything that starts the job comes through here::

    recsys stream                                       # the CLI: local mini-cluster, until Ctrl-C
    python -m flink_jobs.main --home H [--from-start]   # the same without the CLI (what start_stream spawns)
    deploy/flink-run.sh -m host:8081 -d -- --home H     # `flink run -py flink_jobs/main.py` against a cluster

Run locally, the job resumes from the latest retained checkpoint unless
``--from-start``, and writes ``redis.url`` or the home's embedded Redis (started
here when none runs). Under ``flink run -py`` the Flink client already holds the
environment: the graph is built on it and submitted (detached with ``-d``); Redis
must then be ``redis.url`` or a running home server, never one started here.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from flink_jobs.checkpoints import checkpoint_dir, latest_checkpoint
from flink_jobs.control import resolve_redis_url, run_foreground
from flink_jobs.progress import reset_lineage
from flink_jobs.rating_features import JOB_NAME, StreamSetupError, build, check_setup, make_env
from pipeline.config import Config, ConfigError, load_config
from pipeline.redis_server import RedisUnavailable, redis_for_home


def submitted_by_flink_cli() -> bool:
    """True inside `flink run -py` (the client's JVM gateway is already running)."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's own options, shared by this module's parser and `recsys stream`."""
    parser.add_argument("--from-start", "--no-restore", dest="from_start", action="store_true",
                        help="ignore retained checkpoints: empty state, the whole spool again (Redis values are "
                             "rewritten)")
    parser.add_argument("--until-idle", type=float, metavar="SECONDS",
                        help="stop once every spool line is consumed and nothing new arrived for SECONDS")
    parser.add_argument("--max-seconds", type=float, metavar="SECONDS", help="stop after SECONDS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flink_jobs.main", description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="home directory (default $RECSYS_HOME or ./var)")
    parser.add_argument("--config", help="TOML config file")
    add_job_arguments(parser)
    return parser


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def submit(cfg: Config, restore: bool = True) -> int:
    """Build the graph on the Flink client's environment and submit it (`flink run -py`)."""
    restore_from = latest_checkpoint(checkpoint_dir(cfg)) if restore else None
    if restore_from is None:
        reset_lineage(cfg)
    env = make_env(cfg, restore_from, local=False)
    build(env, cfg, resolve_redis_url(cfg))
    client = env.execute_async(JOB_NAME)
    print(f"submitted {JOB_NAME} as job {client.get_job_id()} (restored from {restore_from or 'nothing'})", flush=True)
    return 0


def run(cfg: Config, *, restore: bool = True, until_idle: float | None = None, max_seconds: float | None = None,
        log: Callable[[str], None] = _stderr) -> int:
    """Start the job for ``cfg``: submitted under `flink run -py`, else in the foreground on the mini-cluster."""
    check_setup(cfg)  # a missing Kafka jar fails here, before Redis or Flink start
    if submitted_by_flink_cli():
        return submit(cfg, restore)
    with redis_for_home(cfg) as url:
        return run_foreground(cfg, redis_url=url, restore=restore, until_idle=until_idle, max_seconds=max_seconds,
                              log=log)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run; a setup mistake is one line naming it and exit status 2 (as `recsys` does)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(home=args.home, config_file=args.config)
        return run(cfg, restore=not args.from_start, until_idle=args.until_idle, max_seconds=args.max_seconds)
    except (ConfigError, StreamSetupError, RedisUnavailable) as exc:
        if os.environ.get("RECSYS_DEBUG"):
            raise
        _stderr(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

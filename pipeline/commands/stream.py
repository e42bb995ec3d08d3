"""`recsys stream`: the Flink job that keeps online features fresh, on the local mini-cluster.

It resumes from the latest retained checkpoint unless ``--from-start``; Redis is
``redis.url`` or the home's embedded server (started here when none is running).
``--until-idle`` and ``--max-seconds`` make bounded runs for tests and benchmarks.
"""

from __future__ import annotations

import argparse

from pipeline.commands.ui import config_from, console


def cmd_stream(args: argparse.Namespace) -> int:
    from flink_jobs.control import run_foreground
    from flink_jobs.rating_features import check_setup
    from pipeline.redis_server import redis_for_home

    cfg = config_from(args)
    check_setup(cfg)  # a missing Kafka jar fails here, before Redis or Flink start
    with redis_for_home(cfg) as url:
        return run_foreground(cfg, redis_url=url, restore=not args.from_start, until_idle=args.until_idle,
                              max_seconds=args.max_seconds, log=lambda msg: console.print(f"[dim]stream:[/] {msg}",
                                                                                           highlight=False))

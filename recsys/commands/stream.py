"""`recsys stream`: the Flink job that keeps online features fresh, on the local mini-cluster.

A thin wrapper over the stream plane's one entry, ``flink_jobs.main.run``: it resumes
from the latest retained checkpoint unless ``--from-start``; Redis is ``redis.url`` or
the home's embedded server (started when none is running). ``--until-idle`` and
``--max-seconds`` make bounded runs for tests and benchmarks.
"""

from __future__ import annotations

import argparse

from flink_jobs import main as stream_job
from recsys.commands.ui import config_from, console


def cmd_stream(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    return stream_job.run(cfg, restore=not args.from_start, until_idle=args.until_idle, max_seconds=args.max_seconds,
                          log=lambda msg: console.print(f"[dim]stream:[/] {msg}", highlight=False))

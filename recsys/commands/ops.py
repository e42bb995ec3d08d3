"""`recsys redis|config|events`: operating the home's Redis, the configuration and the event path's storage."""

from __future__ import annotations

import argparse
import json
import sys

from recsys.commands.ui import config_from, out
from pipeline.config import as_dict
from pipeline.config_toml import sample_toml
from pipeline.home import Home


def cmd_redis(args: argparse.Namespace) -> int:
    from pipeline import redis_server as rs

    cfg = config_from(args)
    data_dir = Home(cfg.home).redis_dir
    running = rs.find_running(data_dir)
    if args.action == "status":
        out.print(f"running at {rs.display_url(running.url)} (pid {running.pid}; password in "
                  f"{data_dir / 'password'})" if running else "not running")
        return 0 if running else 1
    if args.action == "start":
        server = running or rs.start_redis(data_dir)
        out.print(f"{rs.display_url(server.url)} (password in {data_dir / 'password'})")
        return 0
    if running:
        running.stop(save=True)
        out.print(f"stopped (data saved in {data_dir})")
    else:
        out.print("not running")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "sample":
        sys.stdout.write(sample_toml())
        return 0
    out.print_json(json.dumps(as_dict(config_from(args))))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """`recsys events prune`: the stream's retention step once (what `recsys stream` runs every minute)."""
    from flink_jobs.progress import retain

    cfg = config_from(args)
    done = retain(cfg)
    if done.get("skipped"):
        out.print(f"another retention step is running (lock {Home(cfg.home).locks / 'retention.lock'}); nothing done")
        return 1
    out.print(f"deleted {done['segments']} consumed spool segments (older than events.retain_hours = "
              f"{cfg.events.retain_hours:g}) and {done['dead_letters']} dead-letter files")
    return 0

"""`recsys demo`: synthetic data -> batch plane -> Redis, then recall lists for a few users."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipeline.commands.batch import run_batch_with_progress
from pipeline.commands.data import ensure_default_data
from pipeline.commands.ui import config_from, console, print_table
from pipeline.config import Config
from pipeline.home import Home


def cmd_demo(args: argparse.Namespace) -> int:
    import redis

    from pipeline.redis_server import redis_for_home
    from pipeline.recall import merge
    from pipeline.store import RedisStore

    overrides = {"synth": {"users": args.users, "ratings": args.ratings, "movies": args.movies}}
    cfg = config_from(args, overrides)
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else ensure_default_data(cfg)
    manifest = run_batch_with_progress(cfg, data)
    with redis_for_home(cfg) as url:
        client = redis.Redis.from_url(url)
        store = RedisStore(client, cfg.redis.key_prefix)
        users = sorted(int(u) for u in _sample_users(cfg, manifest["version"], args.show))
        for user_id in users + [10**9]:
            ctx, feats = store.user_context(user_id)
            candidates = merge(ctx, store, cfg.recall)[:args.k]
            titles = _titles(store, [c.movie_id for c in candidates] + [m for m, _, _ in ctx.history[-3:]])
            who = (f"user {user_id} ({feats.get('gender')}, age {feats.get('age_bucket')}, likes {', '.join(ctx.top_genres)})"
                   if feats else f"unknown user {user_id} (cold start)")
            recent = "; ".join(titles.get(m, str(m)) for m, _, _ in ctx.history[-3:]) or "-"
            print_table(f"{who}\nrecently rated: {recent}", ["#", "movie", "recall score", "channels"],
                         [[i + 1, titles.get(c.movie_id, c.movie_id), c.score, ",".join(c.sources)]
                          for i, c in enumerate(candidates)])
        client.close()
    console.print(f"[bold green]demo done in {time.perf_counter() - t0:.0f} s[/]: home {cfg.home}, "
                  f"batch version {manifest['version']} published to Redis (saved under {Home(cfg.home).redis_dir}).")
    return 0


def _sample_users(cfg: Config, version: str, n: int) -> list[int]:
    import pandas as pd

    from pipeline.home import table_path

    uf = pd.read_parquet(table_path(Home(cfg.home), version, "user_features"), columns=["user_id", "n_ratings"])
    return uf.sort_values("user_id").iloc[:: max(1, len(uf) // max(n, 1))]["user_id"].head(n).tolist()


def _titles(store: Any, movie_ids: list[int]) -> dict[int, str]:
    pipe = store.client.pipeline(transaction=False)
    for m in movie_ids:
        pipe.hget(store.keys.movie(store.version, m), "title")
    return {m: json.loads(t) for m, t in zip(movie_ids, pipe.execute()) if t}

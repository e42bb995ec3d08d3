"""`recsys evaluate`: quality under the protocols of docs/evaluation.md.

Stage ``recall`` (protocol P1): for every user with a held-out test movie, build the
user's recall context from what was *published* to Redis (history = train + val)
and run each configured channel, exactly as the gateway does; report each channel's
coverage (share of users whose test movie it proposes, within its quota) and the
coverage of the merged candidates at ``recall.merged_size``. A popularity baseline
(top-10 most rated unseen movies) gives HR@10 / NDCG@10 under full ranking.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import redis

from pipeline import keys as K
from pipeline.config import Config
from pipeline.home import Home, atomic_write_text, table_path
from pipeline.metrics import hit_at_k, mean, ndcg_at_k, rank_of
from pipeline.recall import RecallContext, Scored, fuse, kept_channels, run_channels
from pipeline.store import RedisStore


class EvaluationError(RuntimeError):
    pass


@dataclass
class Row:
    model: str
    protocol: str
    metrics: dict[str, float]
    seconds: float
    notes: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"info": self.info, "rows": [r.__dict__ for r in self.rows]}


def load_heldout(cfg: Config) -> tuple[str, pd.DataFrame]:
    """The current batch version (must be a P1 build) and its held-out test movies."""
    home = Home(cfg.home)
    version = home.current_version()
    if version is None:
        raise EvaluationError(f"no batch version in {home.root}: run `recsys batch --split p1` first")
    manifest = home.read_manifest(version)
    if manifest.get("split") != "p1":
        raise EvaluationError(f"batch version {version} was built with split={manifest.get('split')!r}; "
                              "evaluation needs the leave-one-out build: run `recsys batch --split p1`")
    heldout = pd.read_parquet(table_path(home, version, "heldout"))
    return version, heldout[heldout["test_movie"].notna()].reset_index(drop=True)


def evaluate_recall(cfg: Config, client: redis.Redis, k: int = 10, max_users: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None,
                    extra_channels: Callable[[RecallContext], dict[str, Scored]] | None = None) -> Report:
    """Coverage per channel and merged; ``extra_channels`` adds channels computed above this layer (the
    gateway's model channel, from an exported model), merged exactly as the gateway merges them."""
    version, heldout = load_heldout(cfg)
    if max_users:
        heldout = heldout.sample(n=min(max_users, len(heldout)), random_state=0).reset_index(drop=True)
    store = RedisStore(client, cfg.redis.key_prefix)
    manifest = store.manifest()
    if manifest.get("batch_version") != version:
        raise EvaluationError(f"Redis serves {manifest.get('batch_version')} but the warehouse's current version is "
                              f"{version}: rerun `recsys batch --split p1` (or its publish step)")
    t0 = time.perf_counter()
    channel_hits: dict[str, list[float]] = {}
    channel_sizes: dict[str, list[int]] = {}
    merged_hits: list[float] = []
    merged_sizes: list[int] = []
    pop_hr: list[float] = []
    pop_ndcg: list[float] = []
    popular = [m for m, _ in store.global_list(K.list_popular())]
    n = len(heldout)
    for i, row in enumerate(heldout.itertuples(index=False)):
        target = int(row.test_movie)
        ctx, _ = store.user_context(int(row.user_id))
        per_channel = run_channels(ctx, store, cfg.recall)
        if extra_channels is not None:
            per_channel.update(extra_channels(ctx))
        for name, items in per_channel.items():
            channel_hits.setdefault(name, []).append(1.0 if any(m == target for m, _ in items) else 0.0)
            channel_sizes.setdefault(name, []).append(len(items))
        merged = fuse(per_channel, cfg.recall.merged_size, kept_channels(cfg.serving))
        merged_hits.append(1.0 if any(c.movie_id == target for c in merged) else 0.0)
        merged_sizes.append(len(merged))
        top = [m for m in popular if m not in ctx.exclude][:k]
        r = rank_of(target, top)
        pop_hr.append(hit_at_k(r, k))
        pop_ndcg.append(ndcg_at_k(r, k))
        if on_progress and (i % 200 == 0 or i == n - 1):
            on_progress(i + 1, n)
    seconds = round(time.perf_counter() - t0, 2)
    report = Report(info={"batch_version": version, "publish_version": store.version, "users": n,
                          "merged_size": cfg.recall.merged_size, "channels": list(cfg.recall.channels),
                          "quotas": dict(cfg.recall.quotas)})
    for name, hits in channel_hits.items():
        report.rows.append(Row(model=f"recall:{name}", protocol="P1 coverage",
                               metrics={"coverage": round(mean(hits), 4),
                                        "mean_candidates": round(mean(channel_sizes[name]), 1)}, seconds=seconds))
    report.rows.append(Row(model="recall:merged", protocol="P1 coverage",
                           metrics={"coverage": round(mean(merged_hits), 4), "mean_candidates": round(mean(merged_sizes), 1)},
                           seconds=seconds, notes=f"reciprocal-rank fusion, cut at {cfg.recall.merged_size}"))
    report.rows.append(Row(model="baseline:popularity", protocol="P1 full ranking",
                           metrics={f"HR@{k}": round(mean(pop_hr), 4), f"NDCG@{k}": round(mean(pop_ndcg), 4)},
                           seconds=seconds, notes="most rated unseen movies"))
    return report


def write_json(report: Report, path: Path) -> None:
    atomic_write_text(path, json.dumps(report.as_dict(), indent=2))

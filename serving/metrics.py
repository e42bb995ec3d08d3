"""Prometheus metrics of one gateway (its own registry, so several gateways can share a process).

What an operator needs to see at ``/metrics``: requests by method and status code,
latency per method and per stage (features, recall, rank), degraded answers by the
dependency that failed, and which model and batch versions are answering.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 1 ms to 5 s: a Recommend is tens of ms, a timeout seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STAGES = ("features", "recall", "rank", "blend")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_requests", "Gateway calls by method and status code.", ["method", "code"], registry=r)
        self.latency = Histogram("recsys_request_seconds", "Gateway call latency by method.", ["method"],
                                 buckets=BUCKETS, registry=r)
        self.stage = Histogram("recsys_stage_seconds", "Time per serving stage (features, recall, rank, blend).",
                               ["stage"], buckets=BUCKETS, registry=r)
        self.degraded = Counter("recsys_degraded", "Answers given by a fallback, by the dependency that failed.",
                                ["method", "dependency"], registry=r)
        self.model_version = Gauge("recsys_model_version", "Model server version of the last ranked answer.", registry=r)
        self.batch_version = Gauge("recsys_batch_version_info", "Published batch version in use (value 1).",
                                   ["version"], registry=r)
        self.events = Counter("recsys_events_recorded", "Rating events appended to the event log.", registry=r)
        self.candidates = Histogram("recsys_candidates", "Merged recall candidates per Recommend.",
                                    buckets=(10, 50, 100, 200, 300, 400, 500, 1000), registry=r)
        self._batch_version = ""
        for s in STAGES:
            self.stage.labels(s)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)

    def set_batch_version(self, version: str) -> None:
        if version and version != self._batch_version:
            self._batch_version = version
            self.batch_version.clear()
            self.batch_version.labels(version).set(1)

    def set_model_version(self, version: str) -> None:
        if version.isdigit():
            self.model_version.set(int(version))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

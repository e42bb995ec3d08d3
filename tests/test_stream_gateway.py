"""End to end across planes: RecordRating on the gateway -> spool -> Flink job -> Redis -> the
next Recommend. Real gateway (gRPC on loopback), real model server, real Flink mini-cluster
(a `recsys stream` subprocess), real Redis with a real P1 publish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from pipeline import keys as K
from serving.app import start_gateway
from pipeline.store import RedisStore
from serving.protos.recsys.v1 import recommender_pb2 as pb
from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.test_gateway import _users, copy_version, gateway_config, spawn

pytestmark = [pytest.mark.spark, pytest.mark.tf, pytest.mark.redis, pytest.mark.flink]


def test_a_recorded_rating_leaves_the_next_recommend(exported_model: Path, p1_batch: dict, redis_client: redis.Redis,
                                                      tmp_path: Path) -> None:
    from flink_jobs.control import start_stream

    base = tmp_path / "models" / "ranker"
    copy_version(exported_model / "1", base, 1)
    server = spawn(base)
    cfg = gateway_config(p1_batch, tmp_path).replace(
        "stream", checkpoint_dir=str(tmp_path / "checkpoints"), monitor_interval_ms=100, checkpoint_interval_ms=2000)
    cfg = cfg.replace("events", dead_letter_dir=str(tmp_path / "dead"))
    running = start_gateway(cfg, cfg.redis.url, f"127.0.0.1:{server.port}")
    channel = grpc.insecure_channel(running.grpc_target)
    stub = pb_grpc.RecommenderStub(channel)
    keys = K.Keys(cfg.redis.key_prefix)
    user_id = _users(p1_batch, redis_client)[3]
    job: Any = None
    try:
        before = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10)
        target = before.items[0].movie_id
        job = start_stream(cfg, restore=False)
        event_id = stub.RecordRating(pb.RecordRatingRequest(user_id=user_id, movie_id=target, rating=5.0,
                                                            timestamp=int(time.time())), timeout=10).event_id
        assert event_id
        stats = job.wait_until_consumed(timeout=240, checkpoint=False)
        assert stats["applied"] == 1 and stats["malformed"] == 0, job.log_tail()
        # Features trail the counters by at most one bundle; give them a moment.
        end = time.monotonic() + 30
        after = before
        while time.monotonic() < end:
            after = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=10), timeout=10)
            if target not in [i.movie_id for i in after.items]:
                break
            time.sleep(0.2)
        assert target not in [i.movie_id for i in after.items], "the rated movie is still recommended"
        assert not after.degraded
        online = K.decode_history(redis_client.get(keys.online_history(user_id)))
        assert [m for m, _, _ in online] == [target]
        # The movie operator publishes at its own tick, which may trail the user operator's by one interval.
        end = time.monotonic() + 30
        while redis_client.zscore(keys.trending(), target) is None and time.monotonic() < end:
            time.sleep(0.2)
        assert redis_client.zscore(keys.trending(), target) == 1.0
    finally:
        if job is not None:
            job.stop()
        channel.close()
        running.stop()
        server.stop()
        RedisStore(redis_client, cfg.redis.key_prefix).clear_online()

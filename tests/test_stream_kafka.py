"""The stream job with Kafka as the event log, end to end: the gateway's producer -> a real broker -> the
real PyFlink job (KafkaSource, local mini-cluster) -> Redis features.

The broker is Tansu (a Kafka-protocol broker, memory-only) on a free loopback port; the job loads the
official ``flink-connector-kafka`` and ``kafka-clients`` jars (``make kafka-deps``, ``tests/kafka_broker``).
Events are appended through ``pipeline.events.open_event_log`` with ``events.log = "kafka"`` - the
``KafkaEventLog`` that ``RecordRating`` writes with - keyed by user over the topic's partitions.

One job run is shared: phase A is the spool test's event set (one user's events produced newest first,
then a replay of already-produced event ids); phase C is a burst during which the job is SIGKILLed, then
started again from its retained checkpoint (Kafka offsets included), and every event must count once.
Expected values are the ones the spool path is tested against (``fold_user``, ``expected_trending`` of
``tests/test_stream_job.py``), so both logs give the same features for the same events.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import redis

from flink_jobs.control import start_stream
from pipeline import keys as K
from pipeline.events import new_event, open_event_log
from pipeline.features import fold_user
from tests.conftest import make_config
from tests.kafka_broker import kafka_broker  # noqa: F401 - the module's broker fixture
from tests.test_stream_job import (GENRES_OF, HISTORY_LEN, _by_user, _phase_a_events, _poll, _publish_genres,
                                   _snapshot, expected_trending)

pytestmark = [pytest.mark.flink, pytest.mark.redis, pytest.mark.kafka]

BURST = 1500


def _produce(log: Any, events: list, out: dict[str, Any]) -> None:
    try:
        for e in events:
            log.append(e)
    except Exception as exc:  # noqa: BLE001 - reported by the fixture's assertion
        out["produce_error"] = repr(exc)


@pytest.fixture(scope="module")
def run(redis_srv, kafka_broker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: ANN001, F811
    broker, deps = kafka_broker
    home = tmp_path_factory.mktemp("kafka-stream-home")
    cfg = make_config(home, redis_srv.url, features={"history_len": HISTORY_LEN},
                      events={"log": "kafka", "kafka_bootstrap": broker.bootstrap, "kafka_topic": "ratings-test"},
                      stream={"kafka_jar": deps.kafka_jar, "checkpoint_interval_ms": 1000, "trending_window_minutes": 60,
                              "trending_slide_minutes": 5, "sink_batch": 50, "reorder_events": 128})
    client = redis.Redis.from_url(redis_srv.url)
    keys = K.Keys(cfg.redis.key_prefix)
    _publish_genres(client, keys)
    rng = random.Random(7)
    log = open_event_log(cfg)
    out: dict[str, Any] = {"cfg": cfg, "log_kind": type(log).__name__}

    a = _phase_a_events(rng)
    for e in sorted((e for e in a if e.user_id != 8), key=lambda e: e.ts):
        log.append(e)
    for e in sorted((e for e in a if e.user_id == 8), key=lambda e: -e.ts):
        log.append(e)  # newest first: the job must put them back in time order
    replayed = a[:40]
    for e in replayed:
        log.append(e)  # a producer retry / a replay: ids the job has seen count once
    out["duplicates"] = len(replayed)

    t0 = time.monotonic()
    handle = start_stream(cfg)
    try:
        handle.wait_until_consumed(timeout=180, expected=len(a) + len(replayed))
        out["t_A"] = time.monotonic() - t0
        out["A"] = _snapshot(client, keys, {e.user_id for e in a}, {e.movie_id for e in a})
        out["A"]["trending"] = _poll("trending A", lambda: _snapshot(client, keys, set(), set())["trending"],
                                     lambda t: t == expected_trending(a))
        out["events_A"] = a

        later = max(e.ts for e in a) + 3 * 3600
        c = [new_event(rng.choice(list(range(1, 9)) + list(range(60, 100))), rng.randint(1, 45),
                       rng.choice([1, 3, 4, 5]), later + i, f"c-{i}") for i in range(BURST)]
        before = handle.stats()["consumed"]
        # Produced from a thread while the main one watches, so the kill lands early in the burst however fast
        # the producer is; what the thread sends after the kill waits in the topic for the restarted job.
        producer = threading.Thread(target=_produce, args=(log, c, out), name="burst-producer")
        producer.start()
        _poll("part of phase C", lambda: handle.stats()["consumed"], lambda n: n >= before + BURST // 10, timeout=120,
              every=0.02)
        out["consumed_at_kill"] = handle.stats()["consumed"] - before
        handle.kill()
        producer.join(timeout=120)
        assert "produce_error" not in out, out.get("produce_error")
    except BaseException:
        print(handle.log_tail())
        handle.kill()
        raise
    finally:
        log.close()

    everything = a + c
    handle = start_stream(cfg)
    try:
        out["final_stats"] = handle.wait_until_consumed(timeout=180, expected=len(everything) + len(replayed))
        out["C"] = _snapshot(client, keys, {e.user_id for e in everything}, {e.movie_id for e in everything})
        out["C"]["trending"] = _poll("trending C", lambda: _snapshot(client, keys, set(), set())["trending"],
                                     lambda t: t == expected_trending(everything))
        out["log"] = handle.log_tail(20_000)
        out["t_total"] = time.monotonic() - t0
    except BaseException:
        print(handle.log_tail())
        raise
    finally:
        handle.stop()
    print(f"kafka stream run: phase A {out['t_A']:.1f} s, total {out['t_total']:.1f} s, "
          f"killed after {out['consumed_at_kill']} of {BURST}")
    out["all_events"] = everything
    client.close()
    return out


def test_kafka_events_in_features_out_same_as_the_spool(run: dict[str, Any]) -> None:
    assert run["log_kind"] == "KafkaEventLog", "events.log = 'kafka' gives the gateway the Kafka producer"
    snap, events = run["A"], run["events_A"]
    for user, evs in _by_user(events).items():
        expected = fold_user(evs, GENRES_OF, 30.0, HISTORY_LEN)
        assert snap["users"][user] == expected.to_features(), f"user {user}"
        assert snap["hist"][user] == expected.history, f"user {user}"
    assert snap["users"][8]["n_ratings"] == 18, "the user produced newest first"
    for movie in {e.movie_id for e in events}:
        ratings = [e.rating for e in events if e.movie_id == movie]
        assert snap["movies"][movie]["n_ratings"] == len(ratings)
        assert snap["movies"][movie]["mean_rating"] == pytest.approx(sum(ratings) / len(ratings), abs=1e-6)
    assert snap["stats"]["applied"] == len(events)
    assert snap["stats"]["duplicate"] == run["duplicates"] > 0
    assert snap["trending"] == expected_trending(events)
    assert "reading Kafka topic 'ratings-test'" in run["log"]


def test_kafka_crash_and_restart_count_every_event_once(run: dict[str, Any]) -> None:
    events, snap = run["all_events"], run["C"]
    assert 0 < run["consumed_at_kill"] < BURST, "the job was killed mid-stream, after consuming part of the burst"
    assert "restoring from" in run["log"].rsplit("reading Kafka topic", 1)[-1], "the second run resumed from a checkpoint (with its Kafka offsets)"
    for user, evs in _by_user(events).items():
        assert snap["users"][user] == fold_user(evs, GENRES_OF, 30.0, HISTORY_LEN).to_features(), f"user {user}"
    for movie in {e.movie_id for e in events}:
        assert snap["movies"][movie]["n_ratings"] == sum(1 for e in events if e.movie_id == movie), f"movie {movie}"
    assert snap["trending"] == expected_trending(events)
    stats = run["final_stats"]
    assert stats["applied"] == len(events)
    assert stats["duplicate"] == run["duplicates"], "the restored source re-read nothing it had checkpointed"
    assert stats["malformed"] == 0

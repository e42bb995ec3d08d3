"""The publish lock against a real redis-server: compare-and-delete, renewal, fencing,
expiry of a killed holder, and a publish killed with SIGKILL cleaned up by the next
one (real Spark in a child process, real kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from pipeline import keys as K
from pipeline.config import ConfigError
from pipeline.lease import LeaseError, LeaseLost, RedisLease
from tests.conftest import config_environ, make_config

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[1]


def _lease(client: redis.Redis, name: str, ttl: float = 5.0, owner: str = "test") -> RedisLease:
    return RedisLease(client, f"lease-test:{name}:lock", f"lease-test:{name}:seq", ttl=ttl, owner=owner)


def test_second_holder_refused_and_told_who_holds(redis_client: redis.Redis) -> None:
    with _lease(redis_client, "busy", owner="first") as first:
        with pytest.raises(LeaseError, match=r"held by \d+:first:"):
            _lease(redis_client, "busy", owner="second").acquire()
        assert first.token is not None
    assert redis_client.get("lease-test:busy:lock") is None   # released
    with _lease(redis_client, "busy", owner="third") as third:   # free again
        assert third.token > first.token                          # fencing tokens only grow


def test_release_never_deletes_someone_elses_lock(redis_client: redis.Redis) -> None:
    stale = _lease(redis_client, "cad", owner="stale").acquire()
    redis_client.delete(stale.key)            # as if its TTL ran out while it stalled
    fresh = _lease(redis_client, "cad", owner="fresh").acquire()
    try:
        assert stale.release() is False       # compare-and-delete: not its lock any more
        assert redis_client.get(fresh.key).decode() == fresh.value
    finally:
        assert fresh.release() is True
    assert redis_client.get(fresh.key) is None


def test_renewal_keeps_a_long_holder_and_fencing_stops_a_stale_one(redis_client: redis.Redis) -> None:
    lease = _lease(redis_client, "renew", ttl=0.6, owner="long").acquire()
    try:
        time.sleep(2.0)                       # more than three TTLs: only renewal keeps the key
        assert redis_client.get(lease.key).decode() == lease.value
        assert lease.fenced_eval("return redis.call('SET', KEYS[2], ARGV[2])", ["lease-test:renew:x"], ["ok"])
        assert redis_client.get("lease-test:renew:x") == b"ok"
        # Someone else takes over (the lease expired during a stall): the fenced write is refused ...
        redis_client.set(lease.key, "99:usurper:0")
        with pytest.raises(LeaseLost, match="lost"):
            lease.fenced_eval("return redis.call('SET', KEYS[2], ARGV[2])", ["lease-test:renew:x"], ["stale"])
        assert redis_client.get("lease-test:renew:x") == b"ok"
        with pytest.raises(LeaseLost):
            lease.check()
    finally:
        lease.release()
    assert redis_client.get(lease.key) == b"99:usurper:0"   # the usurper's lock survives our release
    redis_client.delete(lease.key)


def test_a_killed_holders_lock_expires_by_itself(redis_srv, redis_client: redis.Redis) -> None:  # noqa: ANN001
    code = textwrap.dedent(f"""
        import sys, redis
        from pipeline.lease import RedisLease
        lease = RedisLease(redis.Redis.from_url({redis_srv.url!r}), "lease-test:kill:lock", "lease-test:kill:seq",
                           ttl=1.0, owner="victim").acquire()
        print(lease.token, flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    try:
        victim_token = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        with pytest.raises(LeaseError, match="victim"):
            _lease(redis_client, "kill").acquire()
        deadline = time.monotonic() + 10
        while True:
            try:
                lease = _lease(redis_client, "kill").acquire()
                break
            except LeaseError:
                assert time.monotonic() < deadline, "the killed holder's lock never expired"
                time.sleep(0.1)
        assert lease.token > victim_token
        lease.release()
    finally:
        if child.poll() is None:
            child.kill()


def test_keep_versions_below_two_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep_versions must be at least 2"):
        make_config(tmp_path, publish={"keep_versions": 1})


@pytest.mark.spark
def test_publish_killed_mid_write_is_cleaned_up_by_the_next(spark, p1_batch: dict, redis_srv,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    from spark_jobs.publish import PublishError, publish

    cfg = make_config(p1_batch["cfg"].home, redis_srv.url, data={"split": "p1"},
                      publish={"lock_seconds": 2.0, "pipeline_size": 100})
    keys = K.Keys(cfg.redis.key_prefix)
    client = redis.Redis.from_url(redis_srv.url)
    first = publish(spark, cfg, p1_batch["version"], client)   # a good version readers use meanwhile
    # A publish in another process, killed with SIGKILL once the users are written.
    code = textwrap.dedent(f"""
        import os, signal, redis
        from pipeline.config import load_config
        from spark_jobs.publish import publish
        from spark_jobs.session import get_spark
        cfg = load_config()
        spark = get_spark(cfg, app_name="publish-victim")
        def die(step):
            if step == "publish movies":
                print("dying", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        publish(spark, cfg, {p1_batch['version']!r}, redis.Redis.from_url({redis_srv.url!r}), on_progress=die)
    """)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}, **config_environ(cfg)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    building = {v.decode(): t.decode() for v, t in client.hgetall(keys.publish_building()).items()}
    assert len(building) == 1, building
    killed = next(iter(building))
    assert list(client.scan_iter(match=keys.version_prefix(killed) + "user:*", count=1000))  # it had written keys
    assert client.get(keys.current()).decode() == first["publish_version"]                   # never switched
    with pytest.raises(PublishError, match="another publish is running"):                     # its lock still lives
        publish(spark, cfg, p1_batch["version"], client)
    deadline = time.monotonic() + 30
    while True:
        try:
            result = publish(spark, cfg, p1_batch["version"], client)
            break
        except PublishError:
            assert time.monotonic() < deadline, "the killed publish's lock never expired"
            time.sleep(0.2)
    assert result["abandoned_removed"] == [killed]
    assert not list(client.scan_iter(match=keys.version_prefix(killed) + "*", count=1000))
    assert client.hlen(keys.publish_building()) == 0
    assert client.get(keys.current()).decode() == result["publish_version"]
    assert result["fencing_token"] > int(killed.rsplit(".", 1)[1]) > int(first["publish_version"].rsplit(".", 1)[1])
    assert client.get(keys.publish_lock()) is None
    # keep_versions = 2: the previous good version is still complete for readers that resolved it.
    assert client.exists(keys.manifest(first["publish_version"]))
    client.close()

"""The embedded redis-server lifecycle of a home: start, find again, persist, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from pipeline import redis_server as rs
from tests.conftest import make_config

pytestmark = pytest.mark.redis


def test_binary_from_the_pinned_wheel() -> None:
    assert Path(rs.find_redis_server()).name == "redis-server"


def test_home_server_persists_and_is_found_again(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "home")
    with rs.redis_for_home(cfg, keep_running=True) as url:
        redis.Redis.from_url(url).set("k", "v1")
    running = rs.find_running(tmp_path / "home" / "redis")
    assert running is not None and running.url == url      # left running: the next command finds it
    with rs.redis_for_home(cfg) as again:
        assert again == url                                # ... and does not start a twin
    running.stop(save=True)
    assert rs.find_running(tmp_path / "home" / "redis") is None
    with rs.redis_for_home(cfg) as url2:                   # a fresh start reloads the saved data
        assert redis.Redis.from_url(url2).get("k") == b"v1"
    assert rs.find_running(tmp_path / "home" / "redis") is None  # started here -> stopped on exit


def test_two_homes_get_two_servers(tmp_path: Path) -> None:
    a = rs.start_redis(tmp_path / "a")
    b = rs.start_redis(tmp_path / "b")
    try:
        assert a.port != b.port
        redis.Redis.from_url(a.url).set("x", "a")
        assert redis.Redis.from_url(b.url).get("x") is None
    finally:
        a.stop(save=False)
        b.stop(save=False)


def test_stale_server_file_ignored(tmp_path: Path) -> None:
    d = tmp_path / "redis"
    d.mkdir()
    (d / "server.json").write_text('{"pid": 999999, "port": 1, "url": "redis://127.0.0.1:1/0"}')
    assert rs.find_running(d) is None
    assert not (d / "server.json").exists()


def test_configured_url_that_does_not_answer_is_named(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, redis_url=f"redis://127.0.0.1:{rs.free_port()}/0")
    with pytest.raises(rs.RedisUnavailable, match="does not answer"):
        with rs.redis_for_home(cfg):
            pass


def _kill_9(server: rs.EmbeddedRedis) -> None:
    """SIGKILL, as a crash would: no shutdown, no save; waits until the process is gone."""
    import os
    import signal
    import time

    os.kill(server.pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while rs.pid_alive(server.pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not rs.pid_alive(server.pid)


def test_kill_9_loses_no_acknowledged_write_and_the_restart_keeps_the_port(tmp_path: Path) -> None:
    import time

    cfg = make_config(tmp_path / "home")
    with rs.redis_for_home(cfg, keep_running=True) as url:
        client = redis.Redis.from_url(url)
        client.mset({f"k{i}": i for i in range(100)})
        client.close()
    time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
    running = rs.find_running(tmp_path / "home" / "redis")
    assert running is not None
    _kill_9(running)
    assert rs.find_running(tmp_path / "home" / "redis") is None
    with rs.redis_for_home(cfg) as again:
        assert again == url                                    # same port, same password: clients reconnect
        client = redis.Redis.from_url(again)
        assert client.mget([f"k{i}" for i in range(100)]) == [str(i).encode() for i in range(100)]
        client.close()


def test_the_server_needs_the_password_from_a_0600_file(tmp_path: Path) -> None:
    server = rs.start_redis(tmp_path / "r")
    try:
        secret = (tmp_path / "r" / "password").read_text().strip()
        assert (tmp_path / "r" / "password").stat().st_mode & 0o777 == 0o600 and len(secret) >= 32
        assert (tmp_path / "r" / "redis.conf").stat().st_mode & 0o777 == 0o600   # it holds requirepass
        assert secret in server.url and secret not in (tmp_path / "r" / "server.json").read_text()
        assert redis.Redis.from_url(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()
        assert rs.display_url(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"
        assert rs.display_url("redis://h:1/0") == "redis://h:1/0"
    finally:
        server.stop(save=False)


def test_a_home_with_only_an_rdb_is_loaded_and_switched_to_the_aof(tmp_path: Path) -> None:
    """A home from before the AOF has dump.rdb alone: its data is loaded, then kept by the AOF from then on."""
    d = tmp_path / "r"
    server = rs.start_redis(d)
    redis.Redis.from_url(server.url).set("old", "rdb")
    server.stop(save=True)
    (d / "appendonly.aof").unlink()
    assert (d / "dump.rdb").exists()
    server = rs.start_redis(d)
    client = redis.Redis.from_url(server.url)
    assert client.get("old") == b"rdb" and client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()
    _kill_9(server)
    (d / "dump.rdb").unlink()                                # from now on the AOF alone holds the data
    server = rs.start_redis(d)
    try:
        assert redis.Redis.from_url(server.url).get("old") == b"rdb"
    finally:
        server.stop(save=False)


def test_a_recorded_port_taken_by_someone_else_gives_a_fresh_one(tmp_path: Path) -> None:
    import socket

    d = tmp_path / "r"
    first = rs.start_redis(d)
    first.stop(save=False)
    with socket.socket() as squatter:                        # another program listens there now
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # the closed server's TIME_WAIT
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        second = rs.start_redis(d)
        try:
            assert second.port != first.port and redis.Redis.from_url(second.url).ping()
            assert (d / "port").read_text() == str(second.port)
        finally:
            second.stop(save=False)

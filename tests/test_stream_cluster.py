"""The production submission path: a standalone Flink cluster on loopback, the job sent with `flink run -py`.

The cluster is the apache-flink wheel's own scripts (start-cluster.sh, flink,
stop-cluster.sh) with configuration, logs and pid files in a temp directory and free
ports, so nothing outside the test is touched. The job goes through
``deploy/flink-run.sh`` (detached), events go into the spool, features must appear in
Redis, then the job is cancelled with ``flink cancel`` and the cluster stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pyflink
import pytest
import redis

from flink_jobs.control import stream_stats
from pipeline import keys as K
from pipeline.config_toml import config_toml
from pipeline.home import atomic_write_text
from pipeline.events import SpoolWriter, new_event, spool_dir
from pipeline.features import fold_user
from pipeline.redis_server import free_port
from tests.conftest import make_config

pytestmark = [pytest.mark.flink, pytest.mark.redis]

ROOT = Path(__file__).resolve().parent.parent
FLINK_HOME = Path(pyflink.__file__).parent


def _rest(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _cluster_config(conf_dir: Path, rpc_port: int, rest_port: int) -> None:
    conf_dir.mkdir(parents=True)
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties", "logback.xml"):
        shutil.copy(FLINK_HOME / "conf" / name, conf_dir / name)
    java_opts = (FLINK_HOME / "conf" / "config.yaml").read_text().split("all: ", 1)[1].splitlines()[0]
    (conf_dir / "config.yaml").write_text(f"""\
env:
  java:
    opts:
      all: {java_opts}
jobmanager:
  bind-host: 127.0.0.1
  rpc: {{address: 127.0.0.1, port: {rpc_port}}}
  memory: {{process: {{size: 1024m}}}}
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: 2
  memory: {{process: {{size: 1600m}}}}
rest: {{address: 127.0.0.1, bind-address: 127.0.0.1, port: {rest_port}}}
blob: {{server: {{port: "0"}}}}
parallelism: {{default: 1}}
""")
    (conf_dir / "masters").write_text(f"127.0.0.1:{rest_port}\n")
    (conf_dir / "workers").write_text("127.0.0.1\n")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict]:
    """A standalone session cluster (one JobManager, one TaskManager) on loopback."""
    rest_port, rpc_port = free_port(), free_port()
    env = dict(os.environ, FLINK_CONF_DIR=str(tmp_path / "conf"), FLINK_LOG_DIR=str(tmp_path / "log"),
               FLINK_PID_DIR=str(tmp_path / "pid"))
    _cluster_config(tmp_path / "conf", rpc_port, rest_port)
    (tmp_path / "pid").mkdir()
    (tmp_path / "log").mkdir()  # the daemon scripts expect it
    subprocess.run(["bash", str(FLINK_HOME / "bin" / "start-cluster.sh")], env=env, check=True, capture_output=True,
                   timeout=120)
    info = {"env": env, "rest": rest_port, "log": tmp_path / "log"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _rest(rest_port, "/overview").get("slots-available", 0) >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the standalone cluster did not offer a slot; logs in {tmp_path / 'log'}")
            time.sleep(0.5)
        yield info
    finally:
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "stop-cluster.sh")], env=env, capture_output=True, timeout=120)
        for pid_file in (tmp_path / "pid").glob("*.pid"):  # anything the script did not stop
            for pid in pid_file.read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def test_flink_run_on_a_standalone_cluster(cluster: dict, redis_srv, tmp_path: Path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    cfg = make_config(home, redis_srv.url, stream={"checkpoint_interval_ms": 1000, "monitor_interval_ms": 200})
    config_file = tmp_path / "job.toml"
    atomic_write_text(config_file, config_toml(cfg))
    client = redis.Redis.from_url(redis_srv.url)
    keys = K.Keys(cfg.redis.key_prefix)
    submit = subprocess.run([str(ROOT / "deploy" / "flink-run.sh"), "-m", f"127.0.0.1:{cluster['rest']}", "-d", "--",
                             "--home", str(home), "--config", str(config_file)],
                            env=cluster["env"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-3000:]
    job_id = re.search(r"JobID ([0-9a-f]{32})", output).group(1)
    try:
        events = [new_event(u, 100 + (u * i) % 7, float(1 + (u + i) % 5), 1_000_000 + i * 60, f"c-{u}-{i}")
                  for u in (1, 2, 3) for i in range(5)]
        writer = SpoolWriter(spool_dir(cfg), roll_seconds=60.0, roll_events=1000)
        for e in events:
            writer.append(e)
        writer.close()
        deadline = time.monotonic() + 120
        while stream_stats(client, cfg.redis.key_prefix)["applied"] < len(events) and time.monotonic() < deadline:
            time.sleep(0.3)
        state = _rest(cluster["rest"], f"/jobs/{job_id}")["state"]
        assert state == "RUNNING", f"job is {state}; logs in {cluster['log']}"
        for user in (1, 2, 3):
            got = K.decode_fields(client.hgetall(keys.online_user(user)))
            evs = [(e.movie_id, e.rating, e.ts) for e in events if e.user_id == user]
            assert got == fold_user(evs, {}, cfg.features.genre_half_life_days, cfg.features.history_len).to_features()
        assert {int(m): int(s) for m, s in client.zrange(keys.trending(), 0, -1, withscores=True)} == \
            {m: sum(1 for e in events if e.movie_id == m) for m in {e.movie_id for e in events}}
    finally:
        cancel = subprocess.run([str(FLINK_HOME / "bin" / "flink"), "cancel", "-m", f"127.0.0.1:{cluster['rest']}", job_id],
                                env=cluster["env"], capture_output=True, text=True, timeout=120)
        client.close()
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    deadline = time.monotonic() + 60
    while _rest(cluster["rest"], f"/jobs/{job_id}")["state"] != "CANCELED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _rest(cluster["rest"], f"/jobs/{job_id}")["state"] == "CANCELED"

"""The batch plane on a Spark standalone cluster: a master and a worker on loopback,
started from the pyspark wheel's own `spark-class`, and the six steps submitted with
``deploy/spark-batch.sh --master spark://...`` (one ``deploy/spark-submit.sh`` per
step, as a scheduler runs them). Its tables must equal the local run's (the p1_batch
fixture, same dataset and configuration): row counts and a content checksum."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyspark
import pytest
import redis

from pipeline import keys as K
from pipeline.home import TABLES_BY_STEP, Home, table_path
from pipeline.redis_server import free_port
from tests.conftest import config_environ, make_config

pytestmark = [pytest.mark.spark, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[1]
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _json(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict]:
    """A standalone master + one worker (2 cores, 2 GiB) on 127.0.0.1, logs in tmp_path."""
    port, ui, worker_ui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(tmp_path / "work")}
    procs = []
    try:
        with open(tmp_path / "master.log", "w") as log:
            procs.append(subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host",
                                           "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait(lambda: _json(ui)["status"] == "ALIVE", "the master did not come up", tmp_path, procs)
        with open(tmp_path / "worker.log", "w") as log:
            procs.append(subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", "--host",
                                           "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port",
                                           str(worker_ui), f"spark://127.0.0.1:{port}"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait(lambda: sum(w["state"] == "ALIVE" for w in _json(ui)["workers"]) == 1, "no worker registered",
              tmp_path, procs)
        yield {"url": f"spark://127.0.0.1:{port}", "ui": ui, "env": env, "logs": tmp_path}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait(ready, what: str, logs: Path, procs: list) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 120
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            pytest.fail(f"{what}; logs in {logs}")
        time.sleep(0.5)


def _canonical(value):  # noqa: ANN001, ANN202
    if isinstance(value, np.ndarray):
        return [_canonical(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return None if value != value else float(f"{value:.6g}")
    if isinstance(value, np.generic):
        return _canonical(value.item())
    return value


def table_summary(path: Path) -> tuple[int, str]:
    """(rows, sha256 of the sorted canonical rows): equal tables, whatever their file layout."""
    if path.suffix == ".json":
        return 1, hashlib.sha256(json.dumps(json.loads(path.read_text()), sort_keys=True).encode()).hexdigest()
    df = pd.read_parquet(path)
    cols = sorted(df.columns)
    rows = sorted(json.dumps([_canonical(v) for v in row], default=str)
                  for row in df[cols].itertuples(index=False, name=None))
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_batch_plane_on_a_standalone_cluster_equals_the_local_run(cluster: dict, p1_batch: dict, small_data: Path,
                                                                  redis_srv, tmp_path: Path) -> None:  # noqa: ANN001
    home = tmp_path / "cluster-home"
    cfg = make_config(home, redis_srv.url, data={"split": "p1"})
    env = {**{k: v for k, v in cluster["env"].items() if not k.startswith("RECSYS_")}, **config_environ(cfg)}
    proc = subprocess.run([str(ROOT / "deploy" / "spark-batch.sh"), "--master", cluster["url"],
                           "--driver-memory", "1g", "--executor-memory", "1g", "--total-executor-cores", "2",
                           "--conf", "spark.driver.host=127.0.0.1", "--",
                           "--home", str(home), "--data", str(small_data)],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("batch: ")][-1] == "batch: publish"
    version = json.loads(proc.stdout[proc.stdout.index("{"):])["version"]
    # The six submissions really ran on the cluster (not in a local master).
    apps = _json(cluster["ui"])["completedapps"]
    assert len(apps) == 6 and all(a["state"] == "FINISHED" for a in apps), apps
    manifest = Home(home).read_manifest(version)
    assert manifest["status"] == "complete" and Home(home).current_version() == version

    local, remote = Home(p1_batch["cfg"].home), Home(home)
    differences = {}
    for step, tables in TABLES_BY_STEP.items():
        for name in tables:
            ours = table_summary(table_path(remote, version, name))
            theirs = table_summary(table_path(local, p1_batch["version"], name))
            if ours != theirs:
                differences[name] = (ours, theirs)
    assert differences == {}
    # And it is published: the same rows as the local run's publish, under the cluster run's prefix.
    assert manifest["steps"]["publish"]["rows"] == p1_batch["manifest"]["steps"]["publish"]["rows"]
    client = redis.Redis.from_url(redis_srv.url)
    keys = K.Keys(cfg.redis.key_prefix)
    live = client.get(keys.current()).decode()
    assert live == manifest["steps"]["publish"]["publish_version"]
    assert K.decode_fields(client.hgetall(keys.manifest(live)))["counts"] == manifest["steps"]["publish"]["rows"]
    client.close()

"""Each batch step runs under spark-submit too (the cluster path), via the deploy wrapper."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pipeline.home import Home, table_path

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spark


def _submit(step: str, *job_args: str) -> dict:
    env = {**os.environ, "RECSYS_SPARK_MASTER": "local[2]", "RECSYS_SPARK_SHUFFLE_PARTITIONS": "4"}
    proc = subprocess.run([str(ROOT / "deploy" / "spark-submit.sh"), step, "--master", "local[2]",
                           "--driver-memory", "1g", "--", *job_args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_ingest_through_spark_submit_in_local_mode(small_data: Path, tmp_path: Path) -> None:
    """One step under ``--master local[2]`` (all six steps on a standalone cluster: test_spark_cluster)."""
    home = tmp_path / "home"
    out = _submit("ingest", "--home", str(home), "--data", str(small_data))
    version = out["version"]
    assert out["ingest"]["layout"] == "ml-1m"
    ratings = pd.read_parquet(table_path(Home(home), version, "ratings"))
    assert len(ratings) == out["ingest"]["tables"]["ratings"]["rows"] > 0
    assert Home(home).read_manifest(version)["status"] == "partial"   # not published: not CURRENT
    assert Home(home).current_version() is None

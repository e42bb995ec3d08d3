"""The Spark session every batch job uses, and atomic table writes.

Python workers must run the interpreter of this venv, not whatever ``python`` is on
PATH: ``PYSPARK_PYTHON`` is pinned to ``sys.executable`` before the JVM starts.
Under ``spark-submit`` the master (and driver memory) are spark-submit's, not the
config's: ``--master spark://...`` or ``k8s://...`` must not be replaced by the
default ``local[*]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from pipeline.config import Config


def get_spark(cfg: Config, app_name: str = "recsys-batch"):  # noqa: ANN201 - pyspark types are optional at import time
    """A SparkSession configured from ``cfg.spark`` (reuses the active one)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    tmp = cfg.home / "tmp" / "spark"
    tmp.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # set by spark-submit, which already chose the master
        builder = builder.master(cfg.spark.master).config("spark.driver.memory", cfg.spark.driver_memory)
    builder = (
        builder
        .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        .config("spark.default.parallelism", str(cfg.spark.shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(tmp))
        .config("spark.sql.warehouse.dir", str(tmp / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={tmp}")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def write_table(df, path: Path, partitions: int | None = None) -> None:  # noqa: ANN001
    """Write ``df`` as parquet at ``path`` atomically: to a temp sibling, then rename.

    A failed job leaves the previous table (or none) in place, never half a table.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if partitions:
        df = df.coalesce(partitions)
    df.write.mode("error").parquet(str(tmp))
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_table(spark, path: Path):  # noqa: ANN001, ANN201
    if not Path(path).exists():
        raise FileNotFoundError(f"table {path} does not exist: run the step that writes it first")
    return spark.read.parquet(str(path))

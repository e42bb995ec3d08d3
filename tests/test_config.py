"""The typed configuration: defaults in one place, file, environment, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config
from pipeline.config_toml import sample_toml

ROOT = Path(__file__).resolve().parents[1]


def test_committed_sample_is_generated_from_the_defaults() -> None:
    """recsys.example.toml is what `recsys config sample` prints: docs cannot drift from code."""
    assert (ROOT / "recsys.example.toml").read_text(encoding="utf-8") == sample_toml()


def test_sample_loads_to_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "recsys.toml").write_text(sample_toml(), encoding="utf-8")
    assert load_config(home=tmp_path, environ={}) == Config(home=tmp_path.absolute())


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    (tmp_path / "recsys.toml").write_text("[recall]\nals_rank = 8\nmerged_size = 100\n", encoding="utf-8")
    env = {"RECSYS_RECALL_MERGED_SIZE": "300", "RECSYS_REDIS_URL": "redis://h:1/0", "RECSYS_DATA_SPLIT": "p1"}
    cfg = load_config(home=tmp_path, environ=env, overrides={"recall": {"als_top_n": 50}})
    assert cfg.recall.als_rank == 8            # file
    assert cfg.recall.merged_size == 300       # environment beats file
    assert cfg.recall.als_top_n == 50          # flags beat everything
    assert cfg.redis.url == "redis://h:1/0"
    assert cfg.data.split == "p1"
    assert cfg.home == tmp_path.absolute()


def test_home_from_environment(tmp_path: Path) -> None:
    assert load_config(environ={"RECSYS_HOME": str(tmp_path)}).home == tmp_path.absolute()


@pytest.mark.parametrize("text, message", [
    ("[recal]\nx = 1\n", "unknown section [recal]"),
    ("[recall]\nals_rnk = 1\n", "unknown key 'als_rnk' in [recall]"),
    ("[recall]\nals_rank = 'many'\n", "recall.als_rank: invalid value 'many'"),
    ("[recall]\nals_rank = 0\n", "recall.als_rank must be positive"),
    ("[data]\nsplit = 'p9'\n", "'p9' is not one of none, p1"),
    ("[recall]\nchannels = ['als', 'magic']\n", "unknown channel 'magic'"),
    ("[recall\n", "not valid TOML"),
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "recsys.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(home=tmp_path, environ={})


def test_bad_environment_variable_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECSYS_RECALL_NOPE names no key"):
        load_config(home=tmp_path, environ={"RECSYS_RECALL_NOPE": "1"})
    with pytest.raises(ConfigError, match="recall.item2vec: invalid value 'maybe'"):
        load_config(home=tmp_path, environ={"RECSYS_RECALL_ITEM2VEC": "maybe"})


def test_env_lists_and_tables(tmp_path: Path) -> None:
    cfg = load_config(home=tmp_path, environ={"RECSYS_RECALL_CHANNELS": "als, popular",
                                              "RECSYS_RECALL_QUOTAS": "als=10,popular=5"})
    assert cfg.recall.channels == ["als", "popular"]
    assert cfg.recall.quotas == {"als": 10, "popular": 5}


def test_missing_config_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(home=tmp_path, config_file=tmp_path / "nope.toml", environ={})


def test_two_homes_do_not_share_paths(tmp_path: Path) -> None:
    from pipeline.home import Home

    a, b = Home(tmp_path / "a"), Home(tmp_path / "b")
    assert {a.warehouse, a.redis_dir, a.events, a.models}.isdisjoint({b.warehouse, b.redis_dir, b.events, b.models})


def test_effective_config_round_trips_through_toml(tmp_path: Path) -> None:
    """config_toml is what a child process is handed: loading it gives the same Config back."""
    from pipeline.config_toml import config_toml

    cfg = load_config(home=tmp_path, environ={}, overrides={
        "recall": {"channels": ["als", "popular"], "quotas": {"als": 7}},
        "serving": {"bind": "127.0.0.1", "recall_weight": 0.25}, "events": {"spool_dir": 'a "b"'}})
    path = tmp_path / "effective.toml"
    path.write_text(config_toml(cfg))
    assert load_config(home=tmp_path, config_file=path, environ={}) == cfg


def test_a_removed_key_says_what_replaces_it(tmp_path: Path) -> None:
    (tmp_path / "recsys.toml").write_text('[stream]\nsource = "kafka"\n')
    with pytest.raises(ConfigError, match="stream.source is gone: the event log is chosen once, by events.log"):
        load_config(home=tmp_path, environ={})
    with pytest.raises(ConfigError, match="RECSYS_STREAM_SOURCE is gone"):
        load_config(home=tmp_path / "other", environ={"RECSYS_STREAM_SOURCE": "spool"})

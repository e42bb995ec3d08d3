"""The `recsys` command line: help on every level, clear one-line errors, data commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys import cli

COMMANDS = [[], ["data"], ["data", "synth"], ["data", "inspect"], ["batch"], ["evaluate"], ["train"], ["export"],
            ["explain"], ["redis"], ["config"],
            ["demo"]]


@pytest.mark.parametrize("words", COMMANDS)
def test_help_on_every_level(words: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage: recsys" in capsys.readouterr().out


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "recsys"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "batch" in result.stdout


def test_synth_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    assert cli.main(["--home", str(tmp_path), "data", "synth", "--out", str(out), "--users", "60", "--movies", "80",
                     "--ratings", "3000", "--seed", "3"]) == 0
    assert (out / "ratings.dat").exists()
    assert cli.main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ml-1m" in text and "3000" in text


def test_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--home", str(tmp_path), "batch", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err and "Traceback" not in err
    (tmp_path / "recsys.toml").write_text("[recall]\nals_rnk = 3\n")
    assert cli.main(["--home", str(tmp_path), "config", "show"]) == 2
    assert "unknown key 'als_rnk'" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ratings.dat").write_text("1::2::9::3\n")
    (bad / "movies.dat").write_text("2::X (1999)::Drama\n")
    (bad / "users.dat").write_text("1::F::1::10::48067\n")
    assert cli.main(["data", "inspect", str(bad)]) == 2
    assert "ratings.dat line 1" in capsys.readouterr().err


def test_config_sample_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["config", "sample"]) == 0
    assert "[recall]" in capsys.readouterr().out
    assert cli.main(["--home", str(tmp_path), "config", "show"]) == 0
    assert '"merged_size": 500' in capsys.readouterr().out

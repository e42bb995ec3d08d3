"""The `recsys` command line: help on every level, clear one-line errors, data commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys import cli

COMMANDS = [[], ["data"], ["data", "synth"], ["data", "inspect"], ["batch"], ["evaluate"], ["train"], ["export"],
            ["explain"], ["redis"], ["config"], ["events"], ["events", "prune"],
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


def test_bare_recsys_prints_help_and_version(capsys: pytest.CaptureFixture) -> None:
    assert cli.main([]) == 0
    assert "usage: recsys" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("recsys ")


def test_global_options_after_the_command(tmp_path: Path) -> None:
    parser = cli.build_parser()
    for argv in (["--home", str(tmp_path), "serve"], ["serve", "--home", str(tmp_path)],
                 ["--home", "elsewhere", "serve", "--home", str(tmp_path)]):
        args = parser.parse_args(argv)
        assert args.home == str(tmp_path) and args.command == "serve"
    args = parser.parse_args(["data", "synth", "--users", "5", "--config", "c.toml", "-v"])
    assert (args.config, args.verbose, args.users) == ("c.toml", True, 5)
    args = parser.parse_args(["batch", "--version", "v1"])  # a sub-command's own --version is untouched
    assert args.version == "v1" and args.home is None and not args.verbose


def test_library_output_goes_to_the_home_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """What a JVM or TensorFlow writes to fd 1/2 lands in the log; the CLI's own lines stay on the terminal."""
    import os
    import warnings

    from recsys.quiet import noise_to_log

    log = tmp_path / "logs" / "batch.log"
    with noise_to_log(log, title="recsys batch") as path:
        os.write(2, b"WARN NativeCodeLoader: native noise\n")
        os.write(1, b"jvm stdout noise\n")
        subprocess.run(["sh", "-c", "echo child noise >&2"], check=True)
        warnings.warn("a library's warning", UserWarning)
        print("our progress line", file=sys.stderr)
        print("our table", file=sys.stdout)
    assert path == log
    seen = capfd.readouterr()
    assert "our progress line" in seen.err and "our table" in seen.out
    assert "noise" not in seen.err + seen.out and "library's warning" not in seen.err
    text = log.read_text()
    for line in ("=== recsys batch", "native noise", "jvm stdout noise", "child noise", "a library's warning"):
        assert line in text
    with noise_to_log(log, verbose=True) as path:
        os.write(2, b"shown when verbose\n")
    assert path is None and "shown when verbose" in capfd.readouterr().err


def test_make_help_lists_every_target() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    import re

    targets = {m.group(1) for m in re.finditer(r"^([a-z][a-z-]*):", makefile, re.M)}
    shown = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).resolve().parents[1]).stdout
    listed = {line.split()[1] for line in shown.splitlines() if line.startswith("make ")}
    assert targets and targets == listed, f"make help misses {sorted(targets - listed)}"

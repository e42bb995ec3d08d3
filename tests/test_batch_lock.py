"""`recsys batch` refuses to run twice at once on one home (an OS file lock held by
another real process), says so, and runs once the holder has exited - even by kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.home import Home, HomeLocked

ROOT = Path(__file__).resolve().parents[1]


def _holder(home: Path) -> subprocess.Popen:
    """A child process holding the home's batch lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from pipeline.home import Home
        with Home(__import__('pathlib').Path({str(home)!r})).lock("batch", what="batch steps ingest"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_batch_on_a_home_is_refused_clearly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    child = _holder(home)
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "recsys"), "--home", str(home), "batch",
                               "--data", str(tmp_path / "nowhere")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        message = " ".join(proc.stderr.split())
        assert "another batch is already running on home" in message
        assert f'"pid": {child.pid}' in message and "batch steps ingest" in message
        assert not Home(home).versions.exists()       # refused before anything was written
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_lock_is_freed_when_the_holder_is_killed(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    child = _holder(home.root)
    with pytest.raises(HomeLocked, match=str(child.pid)):
        with home.lock("batch"):
            pass
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    with home.lock("batch", what="after") as path:   # the kernel released the dead holder's lock
        assert '"what": "after"' in path.read_text()
    assert path.read_text() == ""                      # nothing stale left for the next caller

"""Library start-up noise goes to the home's logs, not the terminal (``--verbose`` shows it).

Spark's JVM (log4j ``WARN`` lines, "Setting default log level"), Flink's mini-cluster,
TensorFlow's C++ notes (oneDNN, CPU features) and Python warnings from third-party
packages all write to file descriptor 2 (or 1), below anything Python can filter. So
for a command that starts such libraries, ``noise_to_log`` points fds 1 and 2 at
``<home>/logs/<command>.log`` while Python's own ``sys.stdout`` / ``sys.stderr`` (the
tables, progress bars and error lines of the CLI) keep writing to the terminal
through duplicates of the original descriptors. A JVM started meanwhile keeps the
log as its stdout and stderr for its whole life; Python warnings and ``logging``
records go to the same file.

Example::

    with noise_to_log(Home(home).logs / "batch.log", verbose=args.verbose):
        run_batch(...)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _writes_to_fd(stream: TextIO, fd: int) -> bool:
    """True when ``stream`` is a real file object on ``fd`` (not a test's in-memory capture)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def _fd_to(fd: int, target_fd: int, stream_name: str) -> Iterator[None]:
    """Point ``fd`` at ``target_fd``; ``sys.<stream_name>`` keeps writing where ``fd`` pointed before."""
    stream = getattr(sys, stream_name)
    stream.flush()
    saved = os.dup(fd)
    replacement = None
    if _writes_to_fd(stream, fd):
        replacement = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding=stream.encoding,
                                       errors=stream.errors, line_buffering=True, write_through=True)
        setattr(sys, stream_name, replacement)
    os.dup2(target_fd, fd)
    try:
        yield
    finally:
        getattr(sys, stream_name).flush()
        os.dup2(saved, fd)
        os.close(saved)
        if replacement is not None:
            setattr(sys, stream_name, stream)
            replacement.close()


@contextlib.contextmanager
def noise_to_log(path: Path, verbose: bool = False, title: str = "") -> Iterator[Path | None]:
    """Within the block, library output and Python warnings go to ``path``; yields it (None when ``verbose``).

    With ``verbose`` nothing is redirected and warnings and ``logging`` records show on
    the terminal, TensorFlow's C++ notes included.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(log_fd, f"\n=== {title or 'recsys'} at {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()}) ===\n"
             .encode())
    root = logging.getLogger()
    handler = logging.StreamHandler(open(os.dup(log_fd), "a", encoding="utf-8", buffering=1))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with _fd_to(1, log_fd, "stdout"), _fd_to(2, log_fd, "stderr"):
            yield path
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
        os.close(log_fd)

"""The home directory: every artifact of one deployment lives under it.

Two homes never share anything (tests run each in a temp home), and every command
(`recsys batch`, `train`, `serve`, ...) finds the others' outputs through it.

Layout::

    <home>/recsys.toml           optional configuration
    <home>/data/synthetic/        generated MovieLens-format data (default input)
    <home>/warehouse/versions/<v>/  one batch run: parquet tables + manifest.json
    <home>/warehouse/CURRENT      name of the last complete batch version
    <home>/models/                exported models (TF Serving layout)
    <home>/events/spool/          event spool: rolled JSON-lines segments (stream input)
    <home>/events/dead-letter/    malformed events with their reason
    <home>/stream/checkpoints/    Flink checkpoints of the stream job
    <home>/redis/                 embedded redis-server data, pid and port
    <home>/logs/                  logs of background processes
    <home>/locks/                 lock files of commands that must not run twice at once
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

VERSION_RE = re.compile(r"^v\d{8}T\d{6}\d{3}Z$")


class HomeLocked(RuntimeError):
    """Another process holds one of the home's locks; the message names it."""


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file so that readers see the old or the new content, never half (``mode`` from its
    creation on: a secret is never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def secret_file(path: Path, nbytes: int = 32) -> str:
    """A random secret generated once into ``path`` (mode 0600) and reused; a file others could read is
    tightened to 0600. Two processes creating it at once agree on one (``link`` never replaces a file)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(nbytes))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: theirs is the secret
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path.read_text(encoding="utf-8").strip()


def try_flock(path: Path, create: bool = True) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock``, or None while another holder has it.

    The kernel releases the lock when the descriptor closes, also when its process dies (``kill -9``
    included), so a free lock means its holder is gone. ``create=False`` raises ``FileNotFoundError``
    for a missing file instead of creating one.
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def model_versions(base: Path, complete_only: bool = True) -> dict[int, Path]:
    """Integer version directories of a TF Serving model base path (``<base>/<n>/``), by version.

    The one reading of that layout: the model server's poller and ``recsys serve``
    take only complete versions (``saved_model.pb`` present); ``recsys export`` numbers
    the next one past every integer directory (``complete_only=False``). Dot-names (an
    export in progress) are never versions.
    """
    out: dict[int, Path] = {}
    try:
        entries = list(os.scandir(base))
    except OSError:
        return out
    for e in entries:
        if not e.name.isdigit() or not e.is_dir():
            continue
        p = Path(e.path)
        if not complete_only or (p / "saved_model.pb").is_file():
            out[int(e.name)] = p
    return out


@dataclass(frozen=True)
class Home:
    """Paths of one home; creating the object creates nothing on disk."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def synthetic_data(self) -> Path:
        return self.data / "synthetic"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def versions(self) -> Path:
        return self.warehouse / "versions"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def spool(self) -> Path:
        return self.events / "spool"

    @property
    def dead_letter(self) -> Path:
        return self.events / "dead-letter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "stream" / "checkpoints"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @contextlib.contextmanager
    def lock(self, name: str, what: str = "") -> Iterator[Path]:
        """Hold ``<home>/locks/<name>.lock`` exclusively, or raise :class:`HomeLocked` at once.

        An OS file lock (``flock``): the kernel releases it when the holder exits, even
        on ``kill -9``, so a crash never leaves a stale lock behind. The file holds the
        holder's pid, host and start time, for the message a second caller gets.
        """
        self.locks.mkdir(parents=True, exist_ok=True)
        path = self.locks / f"{name}.lock"
        fd = try_flock(path)
        if fd is None:
            holder = ""
            with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8", errors="replace") as fh:
                holder = fh.read(4096).strip()
            raise HomeLocked(f"{path} is held by {holder or 'another process'}")
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            try:
                yield path
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def version_dir(self, version: str) -> Path:
        return self.versions / version

    def new_version(self) -> str:
        """A fresh, lexicographically increasing batch version name (UTC, millisecond)."""
        while True:
            now = time.time()
            name = time.strftime("v%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
            if not self.version_dir(name).exists():
                return name
            time.sleep(0.002)

    def current_version(self) -> str | None:
        """The last batch version that completed (what serving and evaluation use)."""
        try:
            name = (self.warehouse / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def set_current_version(self, version: str) -> None:
        atomic_write_text(self.warehouse / "CURRENT", version + "\n")

    def read_manifest(self, version: str) -> dict[str, Any]:
        path = self.version_dir(version) / "manifest.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"batch version {version} has no manifest at {path}") from None

    def write_manifest(self, version: str, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.version_dir(version) / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


# Tables of one batch version (parquet directories unless noted), by the step that writes them.
TABLES_BY_STEP: dict[str, tuple[str, ...]] = {
    "ingest": ("ratings", "movies", "users", "tags"),
    "prepare": ("interactions",),
    "features": ("user_features", "movie_features"),
    "recall": ("recall_als", "recall_similar", "recall_next", "recall_lists", "als_user_factors", "als_item_factors"),
    "samples": ("examples", "heldout", "vocab.json"),
}


def table_path(home: Home, version: str, name: str) -> Path:
    """Path of one table of a batch version; unknown names are a programming error."""
    if not any(name in names for names in TABLES_BY_STEP.values()):
        raise KeyError(f"unknown table {name!r}")
    return home.version_dir(version) / name

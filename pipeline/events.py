"""Rating events: the schema (docs/architecture.md contract), its validation, and the spool.

One definition of what a valid event is, used by every writer and reader: the
gateway's ``RecordRating`` builds events with ``new_event`` (invalid input is refused
before anything is written), the stream job parses each line with ``parse_event``
(invalid lines go to the dead-letter place with the ``EventError`` text as reason).

The embedded event log is a *spool directory*: ``SpoolWriter`` appends JSON lines to a
hidden in-progress file (``.seg-<writer>-<seq>``; Flink's FileSource skips names starting
with ``.``) and rolls it every ``events.roll_seconds`` or ``events.roll_events`` by an
atomic rename to ``events-<ms>-<writer>-<seq>.jsonl``, so a reader never sees half a
segment. Names sort by time, so replaying a spool in name order is replaying it in
write order. In production the log is a Kafka topic with the same JSON values.

Crashed writers: each writer has an id unique to its start (``<pid>-<start ms>-<random>``)
and holds an exclusive ``flock`` on ``.writer-<writer>.lock`` while it runs. The kernel
drops the lock when the process dies, however it dies, so a writer starting later takes
over (publishes) the open segment of any writer whose lock is free. Pid liveness would be
wrong: a restarted container's gateway is PID 1 again, and would take its dead
predecessor's segment for its own, live one.

Example::

    log = SpoolWriter(Path("var/events/spool"), roll_seconds=1.0, roll_events=500)
    event = new_event(user_id=42, movie_id=1193, rating=4.5)
    log.append(event)           # visible to the stream job within ~1 s
    parse_event(event.to_json()) == event
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

FIELDS = ("event_id", "user_id", "movie_id", "rating", "ts")
RATING_MIN, RATING_MAX, RATING_STEP = 0.5, 5.0, 0.5  # MovieLens stars (ML-1M uses whole stars only)
MAX_EVENT_ID = 128
MAX_IDEMPOTENCY_KEY = 128     # a caller's retry key (a UUID is 36); longer is refused, not truncated
MAX_ID = 2**31 - 1            # ids are int32 in the batch schema: a larger one could never join anything
MAX_LINE_BYTES = 4096         # an event is ~100 bytes; a longer line is refused before JSON parsing
FUTURE_SLACK_S = 86_400       # event times up to a day ahead (clock skew); later ones would move the watermark
SEGMENT_PREFIX, SEGMENT_SUFFIX, IN_PROGRESS_PREFIX = "events-", ".jsonl", ".seg-"
WRITER_LOCK_PREFIX, WRITER_LOCK_SUFFIX = ".writer-", ".lock"


class EventError(ValueError):
    """An event that breaks the schema; the message is the dead-letter reason."""


@dataclass(frozen=True)
class RatingEvent:
    event_id: str
    user_id: int
    movie_id: int
    rating: float
    ts: int  # seconds since the epoch, like MovieLens timestamps

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _int_field(name: str, value: Any, minimum: int, maximum: int) -> int:
    # bool is an int in Python and 4.0 is a float in JSON: both are refused, ids are integers.
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{name} must be an integer, got {_short(value)}")
    if not minimum <= value <= maximum:
        raise EventError(f"{name} must be in {minimum}..{maximum}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    """repr for an error message, cut so a 5,000-digit number does not become a 5,000-character reason."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else f"a {len(str(abs(value)))}-digit number"
    return text if len(text) <= 80 else text[:77] + "..."


def _ts_field(value: Any) -> int:
    """Seconds since the epoch, from 0 to a day ahead of this machine's clock."""
    return _int_field("ts", value, 0, int(time.time()) + FUTURE_SLACK_S)


def check_rating(value: Any) -> float:
    """A rating is a number in 0.5..5 in half-star steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise EventError(f"rating must be a number, got {_short(value)}")
    if not RATING_MIN <= value <= RATING_MAX or (value / RATING_STEP) != round(value / RATING_STEP):
        raise EventError(f"rating must be between {RATING_MIN} and {RATING_MAX} in steps of {RATING_STEP}, got {_short(value)}")
    return float(value)


def _check_event_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_EVENT_ID:
        raise EventError(f"event_id must be a non-empty string of at most {MAX_EVENT_ID} characters, got {_short(value)}")
    return value


def check_idempotency_key(value: Any) -> str:
    """A caller's idempotency key: 1..128 printable ASCII characters (space to tilde).

    ASCII only so that the key hashes to the same event id whatever the caller's encoding; bounded so that a
    gateway's memory of recent keys is bounded too.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY or \
            any(not " " <= c <= "~" for c in value):
        raise EventError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
                         f"got {_short(value)}")
    return value


def keyed_event_id(user_id: int, idempotency_key: str) -> str:
    """The event id of a rating sent with an idempotency key: the same (user, key) gives the same id in every
    process, so a retry that reaches another gateway is still one event to the stream job (which drops event
    ids it has seen). Scoped by user: two users' keys never collide."""
    text = f"recsys.v1.RecordRating\0{user_id}\0{check_idempotency_key(idempotency_key)}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def new_event(user_id: int, movie_id: int, rating: float, ts: int | None = None,
              event_id: str | None = None, idempotency_key: str | None = None) -> RatingEvent:
    """A validated event (``ts`` defaults to now) with ``event_id``, else the id ``keyed_event_id`` derives
    from ``idempotency_key``, else a fresh random id."""
    user_id = _int_field("user_id", user_id, 1, MAX_ID)
    if event_id is not None and idempotency_key is not None:
        raise EventError("give event_id or idempotency_key, not both")
    if event_id is not None:
        event_id = _check_event_id(event_id)
    elif idempotency_key is not None:
        event_id = keyed_event_id(user_id, idempotency_key)
    return RatingEvent(event_id=event_id or uuid.uuid4().hex, user_id=user_id,
                       movie_id=_int_field("movie_id", movie_id, 1, MAX_ID), rating=check_rating(rating),
                       ts=_ts_field(int(time.time()) if ts is None else ts))


def parse_event(raw: str | bytes) -> RatingEvent:
    """One log line -> event; anything else raises ``EventError`` saying what is wrong.

    Every way a line can be bad ends here as an ``EventError`` - too long, not UTF-8, not JSON, nested too deep
    for the parser, a number past the parser's digit limit, out-of-range ids or times - so the stream job
    dead-letters it and goes on instead of failing on it, restarting and reading it again.
    """
    if len(raw) > MAX_LINE_BYTES:
        raise EventError(f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:   # int digit limit, nesting depth
        raise EventError(f"not a usable JSON value: {_short(str(exc))}") from None
    if not isinstance(obj, dict):
        raise EventError(f"not a JSON object: {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise EventError(f"unknown field(s): {', '.join(unknown)}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise EventError(f"missing field(s): {', '.join(missing)}")
    return RatingEvent(event_id=_check_event_id(obj["event_id"]), user_id=_int_field("user_id", obj["user_id"], 1, MAX_ID),
                       movie_id=_int_field("movie_id", obj["movie_id"], 1, MAX_ID), rating=check_rating(obj["rating"]),
                       ts=_ts_field(obj["ts"]))


def dead_letter_line(raw: str | bytes, reason: str) -> str:
    """The dead-letter record of a bad line: the raw text, the reason and when it was seen."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return json.dumps({"raw": text, "error": reason, "seen_at": time.time()}, separators=(",", ":"))


# --- where the log lives ----------------------------------------------------------------
def spool_dir(cfg: Any) -> Path:
    from pipeline.home import Home

    return Path(cfg.events.spool_dir) if cfg.events.spool_dir else Home(cfg.home).spool


def dead_letter_dir(cfg: Any) -> Path:
    from pipeline.home import Home

    return Path(cfg.events.dead_letter_dir) if cfg.events.dead_letter_dir else Home(cfg.home).dead_letter


class EventLog(Protocol):
    def append(self, event: RatingEvent) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SpoolWriter:
    """Thread-safe appender of rolled JSON-lines segments (see the module docstring)."""

    def __init__(self, directory: Path, roll_seconds: float = 1.0, roll_events: int = 500) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.roll_seconds, self.roll_events = roll_seconds, roll_events
        self._lock = threading.Lock()
        self._file: Any = None
        self._path: Path | None = None
        self._count = 0
        self._opened = 0.0
        self._seq = 0
        self._closed = threading.Event()
        self._failing_since: float | None = None  # wall clock of the first I/O error since the last success
        self._last_error = ""
        self.writer_id = new_writer_id()
        self._writer_lock = hold_writer_lock(self.directory, self.writer_id)
        recover_orphans(self.directory)
        self._timer = threading.Thread(target=self._roll_on_time, name="spool-roller", daemon=True)
        self._timer.start()

    def append(self, event: RatingEvent) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the event spool is closed")
            if self._file is not None and self._file.closed:
                self._roll()  # a roll that failed is retried first (an OSError here refuses this event)
            with self._tracked():
                if self._file is None:
                    self._seq += 1
                    self._path = self.directory / f"{IN_PROGRESS_PREFIX}{self.writer_id}-{self._seq:06d}"
                    self._file = open(self._path, "a", encoding="utf-8")
                    self._opened = time.monotonic()
                self._file.write(line)
                self._file.flush()  # accepted = in the OS page cache; a crashed process's segment is recovered
            self._count += 1
            if self._count >= self.roll_events:
                self._roll()

    def _roll(self) -> None:
        """Make the open segment durable and visible: fsync the file, rename it, fsync the directory.

        Without the two fsyncs a power loss after the rename could leave a visible segment with lost
        lines, or lose the rename itself; with them a rolled segment is on disk.
        """
        if self._file is None:
            return
        with self._tracked():
            if not self._file.closed:  # closed already: an earlier roll failed after closing; finish that one
                os.fsync(self._file.fileno())
                self._file.close()
            final = self.directory / f"{SEGMENT_PREFIX}{int(time.time() * 1000):013d}-{self.writer_id}-{self._seq:06d}{SEGMENT_SUFFIX}"
            os.rename(self._path, final)  # type: ignore[arg-type]
            _fsync_dir(self.directory)
        self._file, self._path, self._count = None, None, 0

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Remember whether the spool's I/O works: the first error starts 'failing', the next success ends it."""
        try:
            yield
        except OSError as exc:
            if self._failing_since is None:
                self._failing_since = time.time()
            self._last_error = str(exc) or type(exc).__name__
            raise
        self._failing_since = None

    def health(self) -> dict[str, Any]:
        """The spool's state for ``/healthz``: 'ok', or 'failing' with the last I/O error and since when (UTC),
        plus the events not yet rolled visible and the in-progress segments in the directory (this writer's
        and orphans not yet published). Read without the writer's lock: a stuck fsync must not stall health."""
        since = self._failing_since
        state: dict[str, Any] = {"log": "spool", "state": "ok" if since is None else "failing",
                                 "pending_events": self._count if self._file is not None else 0,
                                 "pending_segments": sum(1 for _ in self.directory.glob(f"{IN_PROGRESS_PREFIX}*"))}
        if since is not None:
            state["last_error"] = self._last_error
            state["failing_since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        return state

    def flush(self) -> None:
        """Close the open segment now (tests and shutdown; normally time or size rolls it)."""
        with self._lock:
            self._roll()

    def _roll_on_time(self) -> None:
        """Roll by age. An I/O error (disk full, a vanished directory) is logged and retried on the next
        tick; the roller never dies, so appends keep working once the error clears."""
        while not self._closed.wait(min(0.25, self.roll_seconds / 4)):
            try:
                with self._lock:
                    if self._file is not None and time.monotonic() - self._opened >= self.roll_seconds:
                        self._roll()
            except OSError as exc:
                logging.getLogger("recsys.events").warning("spool roll failed, retrying: %s", exc)

    def close(self) -> None:
        """Roll the open segment, then give up the writer lock (kept when the roll fails: the segment
        is then published by the next writer once this process has exited)."""
        with self._lock:
            self._roll()
            self._closed.set()
            if self._writer_lock is not None:
                release_writer_lock(self.directory, self.writer_id, self._writer_lock)
                self._writer_lock = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_writer_id() -> str:
    """An id no other writer start has had: the pid alone repeats (PID 1 in every container start)."""
    return f"{os.getpid()}-{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"


def _writer_lock_path(directory: Path, writer_id: str) -> Path:
    return directory / f"{WRITER_LOCK_PREFIX}{writer_id}{WRITER_LOCK_SUFFIX}"


def hold_writer_lock(directory: Path, writer_id: str) -> int:
    """Create the writer's lock file and hold an exclusive flock on it; returns the descriptor to keep open.

    The descriptor is not inherited by child processes (``os.open`` makes it non-inheritable), so a model
    server spawned by the gateway cannot keep a dead gateway's lock alive.
    """
    from pipeline.home import try_flock

    path = _writer_lock_path(directory, writer_id)
    fd = try_flock(path)
    if fd is None:  # cannot happen for a fresh id, unless someone copied this writer's lock file name
        raise OSError(f"{path} is held by another process")
    os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())
    return fd


def release_writer_lock(directory: Path, writer_id: str, fd: int) -> None:
    """Remove the lock file while still holding it, then drop the lock (a clean stop leaves nothing behind)."""
    with contextlib.suppress(FileNotFoundError):
        _writer_lock_path(directory, writer_id).unlink()
    os.close(fd)


@contextlib.contextmanager
def _lock_if_gone(directory: Path, writer_id: str) -> Iterator[bool]:
    """True (holding the writer's lock while inside) when the writer no longer runs, False while it does.

    A free lock means its process is gone: the kernel releases a flock when the last descriptor closes, on a
    crash or ``kill -9`` too. No lock file: a writer of the pid-only naming of earlier versions (digits alone,
    judged by pid, never our own: a predecessor of this process), or one whose segments another writer is
    publishing right now (the renames below then find nothing).
    """
    from pipeline.home import try_flock

    path = _writer_lock_path(directory, writer_id)
    try:
        fd = try_flock(path, create=False)
    except FileNotFoundError:
        yield not (writer_id.isdigit() and int(writer_id) != os.getpid() and _pid_alive(int(writer_id)))
        return
    if fd is None:
        yield False
        return
    try:
        yield True
        # every segment published: the lock file goes (while still locked, so no one takes it over)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)


def recover_orphans(directory: Path) -> list[Path]:
    """Publish the in-progress segments of writers that no longer run (their events were accepted), and
    remove those writers' lock files. A running writer's segment (its lock held) is never touched."""
    directory = Path(directory)
    by_writer: dict[str, list[Path]] = {}
    for path in sorted(directory.glob(f"{IN_PROGRESS_PREFIX}*")):
        by_writer.setdefault(path.name[len(IN_PROGRESS_PREFIX):].rsplit("-", 1)[0], []).append(path)
    for lock in directory.glob(f"{WRITER_LOCK_PREFIX}*{WRITER_LOCK_SUFFIX}"):
        by_writer.setdefault(lock.name[len(WRITER_LOCK_PREFIX):-len(WRITER_LOCK_SUFFIX)], [])
    recovered = []
    for writer_id, paths in sorted(by_writer.items()):
        with _lock_if_gone(directory, writer_id) as gone:
            if not gone:
                continue
            for path in paths:
                seq = path.name.rsplit("-", 1)[-1]
                try:
                    final = directory / f"{SEGMENT_PREFIX}{int(path.stat().st_mtime * 1000):013d}-{writer_id}-r{seq}{SEGMENT_SUFFIX}"
                    os.rename(path, final)
                except FileNotFoundError:  # published by another writer starting at the same moment
                    continue
                recovered.append(final)
    if recovered:
        _fsync_dir(directory)
    return recovered


def _pid_alive(pid: int) -> bool:
    from pipeline.redis_server import pid_alive

    return pid_alive(pid)


def segments(directory: Path) -> list[Path]:
    """Visible segments in write order."""
    return sorted(p for p in Path(directory).glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))


def read_spool(directory: Path) -> Iterator[str]:
    """Every line of every visible segment, in write order (replays, tests, benchmarks)."""
    for path in segments(directory):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")


def open_event_log(cfg: Any) -> EventLog:
    """The configured event log: the spool (embedded default) or a Kafka producer."""
    if cfg.events.log == "kafka":
        return KafkaEventLog(cfg.events.kafka_bootstrap, cfg.events.kafka_topic)
    return SpoolWriter(spool_dir(cfg), cfg.events.roll_seconds, cfg.events.roll_events)


class KafkaEventLog:
    """Production event log: one Kafka record per event, keyed by user (per-user order is kept)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        if not bootstrap:
            raise ValueError("events.log = 'kafka' needs events.kafka_bootstrap (host:port,...)")
        try:
            from kafka import KafkaProducer  # type: ignore[import-not-found]
        except ImportError:
            raise ValueError("events.log = 'kafka' needs the kafka-python package: pip install kafka-python") from None
        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")

    def health(self) -> dict[str, Any]:
        """What this side knows: the producer's own retries and acks=all decide delivery (no local state)."""
        return {"log": "kafka", "topic": self.topic}

    def append(self, event: RatingEvent) -> None:
        self.producer.send(self.topic, key=str(event.user_id).encode(), value=event.to_json().encode()).get(timeout=5)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()

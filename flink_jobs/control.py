"""Running the stream job: in the foreground (`recsys stream`) or in the background (Python API).

The Python API other components use (demo, gateway end-to-end test, benchmarks)::

    from flink_jobs.control import start_stream

    handle = start_stream(cfg)              # the job's entry (flink_jobs.main) in a subprocess, resuming
                                            # from checkpoints
    ...append events to the spool (pipeline.events.SpoolWriter)...
    handle.wait_until_consumed(timeout=120) # every spool line is applied, counted or dead-lettered,
                                            # and a checkpoint after that has completed (so Redis has it all)
    handle.stats()                          # {'applied': .., 'duplicate': .., 'malformed': .., 'consumed': ..}
    handle.stop()                           # Ctrl-C: one more checkpoint, then cancel (state retained)
    handle.kill()                           # SIGKILL of the whole process group (crash tests)

Progress is read from the ``online:stats`` hash (see pipeline/KEYS.md): counts derived
from keyed state, so they are exact across restarts and replays, and "consumed" means
``applied + duplicate + malformed`` equals the number of non-blank lines in the spool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import redis

from pipeline import keys as K
from pipeline.config import Config
from pipeline.config_toml import config_toml
from pipeline.events import IN_PROGRESS_PREFIX, segments, spool_dir
from pipeline.home import Home, atomic_write_text
from pipeline.redis_server import display_url
from pipeline.retention import PruneLedger, count_lines

from flink_jobs.checkpoints import checkpoint_dir, latest_checkpoint, prune
from flink_jobs.progress import RETAIN_EVERY_S, reset_lineage, retain_quietly
from flink_jobs.rating_features import JOB_NAME, build, check_setup, make_env


class StreamError(RuntimeError):
    """The stream job stopped or did not make progress; the message says where to look."""


# --- progress -------------------------------------------------------------------------------
def stream_stats(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Summed progress counters of the job (0 before it counted anything)."""
    return K.decode_stream_stats(client.hgetall(K.Keys(prefix).stream_stats()))


class SpoolCounter:
    """Events accepted into the spool: non-blank lines of its segments, in-progress ones included.

    In-progress segments (``.seg-*``) count too: their events were accepted and become
    visible when the writer rolls them, so "wait until consumed" right after an append
    waits for that event instead of returning at once. They are listed before the
    segments, so a segment renamed in between is counted twice (a longer wait), never
    missed. Finished segments are immutable and counted once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._counts: dict[Path, int] = {}

    @staticmethod
    def _complete_lines(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip() and line.endswith(b"\n"))

    def __call__(self) -> int:
        """Accepted lines: in-progress, visible, and deleted by the retention step (``pipeline.retention``).

        The ledger is read before the listing: a deletion in between is then counted twice (a longer
        wait), never missed."""
        ledger = PruneLedger.read(self.directory)
        pending = 0
        for path in self.directory.glob(f"{IN_PROGRESS_PREFIX}*"):
            try:
                pending += self._complete_lines(path)
            except FileNotFoundError:
                pass  # rolled meanwhile: listed with the segments below
        listed = [p for p in segments(self.directory) if p.name not in ledger.deleting]
        for path in listed:
            if path not in self._counts:
                try:
                    self._counts[path] = count_lines(path)
                except FileNotFoundError:
                    self._counts[path] = 0  # deleted meanwhile: its lines are in the ledger read above
        self._counts = {p: self._counts[p] for p in listed}
        return pending + ledger.lines + sum(self._counts.values())


def completed_checkpoints(cfg: Config, job_id: str | None = None) -> list[tuple[float, Path]]:
    """(mtime, path) of completed checkpoints, of one job or all."""
    pattern = f"{job_id}/chk-*/_metadata" if job_id else "*/chk-*/_metadata"
    out = []
    for meta in checkpoint_dir(cfg).glob(pattern):
        try:
            out.append((meta.stat().st_mtime, meta.parent))
        except OSError:
            continue
    return sorted(out)


def wait_for_checkpoint(cfg: Config, after: float, timeout: float, job_id: str | None = None) -> Path:
    """Block until a checkpoint completes after wall time ``after``; its path."""
    deadline = time.monotonic() + timeout
    while True:
        done = [p for t, p in completed_checkpoints(cfg, job_id) if t > after]
        if done:
            return done[-1]
        if time.monotonic() > deadline:
            raise StreamError(f"no checkpoint completed in {checkpoint_dir(cfg)} within {timeout:.0f} s")
        time.sleep(0.2)


def wait_until_consumed(cfg: Config, client: redis.Redis, timeout: float = 300.0, expected: int | None = None,
                        checkpoint: bool = True, alive: Callable[[], bool] | None = None) -> dict[str, int]:
    """Block until the job has consumed ``expected`` lines (default: every line now in the spool).

    With ``checkpoint`` (the default) it then also waits for a checkpoint that completed
    after that moment, and two publish ticks more (``stream.publish_interval_ms``): every
    operator has seen those events once the checkpoint's barrier passed it, and a write it
    buffered is flushed at the next tick of its shard's publish timer
    (``flink_jobs.operators._Publisher``), so from then on every feature derived from those
    events is in Redis. The counters themselves are written at a tick after the user
    features they count, so without ``checkpoint`` only the movie features may lag.
    """
    counter = SpoolCounter(spool_dir(cfg))
    deadline = time.monotonic() + timeout
    while True:
        want = counter() if expected is None else expected
        stats = stream_stats(client, cfg.redis.key_prefix)
        if stats["consumed"] >= want:
            break
        if alive is not None and not alive():
            raise StreamError(f"the stream job exited after consuming {stats['consumed']} of {want} lines "
                              f"(see {Home(cfg.home).logs / 'stream.log'})")
        if time.monotonic() > deadline:
            raise StreamError(f"the stream job consumed {stats['consumed']} of {want} lines within {timeout:.0f} s")
        time.sleep(0.1)
    if checkpoint:
        wait_for_checkpoint(cfg, time.time(), max(5.0, deadline - time.monotonic()))
        time.sleep(2 * cfg.stream.publish_interval_ms / 1000)
    return stream_stats(client, cfg.redis.key_prefix)


# --- foreground run (recsys stream) ---------------------------------------------------------
def resolve_redis_url(cfg: Config) -> str:
    """redis.url, else the home's running embedded server (the job never starts one itself)."""
    if cfg.redis.url:
        return cfg.redis.url
    from pipeline.redis_server import RedisUnavailable, find_running

    running = find_running(Home(cfg.home).redis_dir)
    if running is None:
        raise RedisUnavailable("no Redis for the stream job: set redis.url / RECSYS_REDIS_URL, "
                               "or start the home's server with `recsys redis start`")
    return running.url


def _source_text(cfg: Config) -> str:
    if cfg.events.log == "kafka":
        return f"Kafka topic {cfg.events.kafka_topic!r} at {cfg.events.kafka_bootstrap}"
    return f"spool {spool_dir(cfg)} (new segments every {cfg.stream.monitor_interval_ms} ms)"


def run_foreground(cfg: Config, redis_url: str | None = None, restore: bool = True, until_idle: float | None = None,
                   max_seconds: float | None = None, log: Callable[[str], None] = print,
                   status_every: float = 10.0) -> int:
    """Run the job on the local mini-cluster until Ctrl-C/SIGTERM, ``max_seconds``, or ``until_idle``.

    ``until_idle``: stop once every spool line is consumed and no new line arrived for
    that many seconds (bounded runs for tests and benchmarks). A clean stop waits for
    one more checkpoint (at most the checkpoint interval), so a restart replays nothing.
    """
    check_setup(cfg)
    url = redis_url or resolve_redis_url(cfg)
    client = redis.Redis.from_url(url)
    ckpt_dir = checkpoint_dir(cfg)
    restore_from = latest_checkpoint(ckpt_dir) if restore else None
    for old in prune(ckpt_dir, keep=restore_from if restore else latest_checkpoint(ckpt_dir)):
        log(f"removed old checkpoints {old}")
    log(f"reading {_source_text(cfg)}")
    log(f"writing Redis {display_url(url)} (key prefix {cfg.redis.key_prefix!r}); dead letters to "
        f"{Home(cfg.home).dead_letter if not cfg.events.dead_letter_dir else cfg.events.dead_letter_dir}")
    log(f"checkpoints every {cfg.stream.checkpoint_interval_ms} ms in {ckpt_dir}; "
        f"{'restoring from ' + str(restore_from) if restore_from else 'starting from empty state'}")
    if restore_from is None:
        reset_lineage(cfg)  # empty state: it will count only the lines still in the spool
    env = make_env(cfg, restore_from, local=True)
    build(env, cfg, url)
    job = env.execute_async(JOB_NAME)
    job_id = str(job.get_job_id())
    log(f"job {job_id} running on the local mini-cluster (Ctrl-C stops it; state is kept)")

    def on_term(signum: int, frame: object) -> None:  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    counter = SpoolCounter(spool_dir(cfg)) if cfg.events.log == "spool" else None
    started = time.monotonic()
    last_status, last_retain = started, started
    last_change, last_lines = started, -1
    rc = 0
    try:
        while True:
            time.sleep(0.25)
            status = str(job.get_job_status().result())
            if status in ("FAILED", "CANCELED", "FINISHED"):
                log(f"job {job_id} ended: {status} (logs in {os.environ.get('FLINK_LOG_DIR', 'the Flink log dir')})")
                return 1 if status != "FINISHED" else 0
            now = time.monotonic()
            stats = stream_stats(client, cfg.redis.key_prefix)
            lines = counter() if counter else stats["consumed"]
            consumed_all = stats["consumed"] >= lines
            if not consumed_all or lines != last_lines:
                last_change = now
            last_lines = lines
            if now - last_status >= status_every:
                last_status = now
                log(f"{stats['applied']} applied, {stats['duplicate']} duplicates, {stats['malformed']} malformed"
                    + (f"; spool {lines} lines" if counter else ""))
            if now - last_retain >= RETAIN_EVERY_S:
                last_retain = now
                retain_quietly(cfg, log)
            if max_seconds is not None and now - started >= max_seconds:
                log(f"stopping after {max_seconds:g} s")
                break
            if until_idle is not None and consumed_all and now - last_change >= until_idle:
                log(f"stopping: all {lines} lines consumed and idle for {until_idle:g} s")
                break
    except KeyboardInterrupt:
        log("stopping (Ctrl-C again to stop without the final checkpoint)")
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        wait_for_checkpoint(cfg, time.time(), cfg.stream.checkpoint_interval_ms / 1000 * 3 + 10, job_id)
    except (StreamError, KeyboardInterrupt) as exc:
        log(f"no final checkpoint ({exc or 'interrupted'}); the next start replays since the last one")
        rc = 1 if isinstance(exc, StreamError) else rc
    job.cancel().result()
    log(f"job {job_id} cancelled; {stream_stats(client, cfg.redis.key_prefix)}")
    client.close()
    return rc


# --- background run (Python API) ------------------------------------------------------------
class StreamHandle:
    """A stream job subprocess (``python -m flink_jobs.main``) for one configuration."""

    def __init__(self, cfg: Config, proc: subprocess.Popen, log_path: Path) -> None:
        self.cfg, self.proc, self.log_path = cfg, proc, log_path
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self._redis_url())
        return self._client

    def _redis_url(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                return resolve_redis_url(self.cfg)
            except RuntimeError:
                if time.monotonic() > deadline or not self.alive():
                    raise
                time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict[str, int]:
        return stream_stats(self.client, self.cfg.redis.key_prefix)

    def wait_until_consumed(self, timeout: float = 300.0, expected: int | None = None,
                            checkpoint: bool = True) -> dict[str, int]:
        return wait_until_consumed(self.cfg, self.client, timeout, expected, checkpoint, alive=self.alive)

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C: the job takes one more checkpoint and is cancelled; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (driver, JVM, Python workers): a crash, for recovery tests."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def start_stream(cfg: Config, restore: bool = True, until_idle: float | None = None,
                 log_path: Path | None = None) -> StreamHandle:
    """Start the stream job for ``cfg`` in the background (its own process group); see the module docstring.

    The child runs the plane's one entry, ``python -m flink_jobs.main``, with ``cfg``
    written out as its config file.
    """
    home = Home(cfg.home)
    config_path = cfg.home / "stream" / "stream-config.toml"
    atomic_write_text(config_path, config_toml(cfg))  # the child sees exactly cfg, overrides included
    log_path = log_path or home.logs / "stream.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "flink_jobs.main", "--home", str(cfg.home), "--config", str(config_path)]
    if not restore:
        cmd.append("--from-start")
    if until_idle is not None:
        cmd += ["--until-idle", str(until_idle)]
    # The config file says it all: RECSYS_<SECTION>_<KEY> variables would override it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") or k == "RECSYS_DEBUG"}
    env["FLINK_LOG_DIR"] = str(home.logs / "flink")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return StreamHandle(cfg, proc, log_path)

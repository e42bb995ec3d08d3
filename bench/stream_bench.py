"""Stream benchmark: sustained events/s through the Flink job into Redis, and freshness.

    make bench                                   # part of the bench suite
    python -m bench.stream_bench --events 100000 --rate 200 --fresh-seconds 20

Three measurements on the same machine, the same Redis and the same events:

1. **throughput**: N events are put in the spool first, then the job starts (local
   mini-cluster); events/s = events consumed between the first and the last counted
   one, over that time (start-up excluded, reported separately);
2. **freshness**: with the job running, events are appended through the gateway's
   spool writer (``events.roll_seconds``, the default 1 s) at a steady rate, each for a
   user never seen before, and a poller records when each user's ``online:hist`` key
   appears: event appended -> feature visible in Redis, p50/p95/p99;
3. **floor**: a plain Python loop doing the job's work (parse, de-duplicate,
   ``OnlineUser.apply``, ``OnlineMovie.apply``, the same keys through the same
   coalescing writer with the same lazy values) on the same events, without Flink's
   state writes: what the job's overhead is measured against.

Uses the bench home of ``bench.serving_bench`` (built once: a published batch gives the
movie genres). Online keys are cleared before and after. Writes
bench/results/stream-<time>.json with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import describe, write_result

console = Console()


def synthetic_events(users: list[int], movies: list[int], n: int, seed: int = 5, user_offset: int = 0) -> list[Any]:
    from pipeline.events import new_event

    rng = np.random.default_rng(seed)
    u = rng.choice(users, size=n) if users else np.arange(n) + user_offset
    m = rng.choice(movies, size=n)
    r = rng.integers(1, 11, size=n) / 2.0
    t0 = 1_046_000_000
    return [new_event(int(u[i]), int(m[i]), float(r[i]), ts=t0 + i) for i in range(n)]


def tree_rss_mib(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.Error:
        return 0.0


def throughput(cfg: Any, events: list[Any], client: Any) -> tuple[dict[str, Any], Any]:
    """Spool first, then the job: sustained events/s (start-up excluded); returns the result and the running job."""
    from flink_jobs.control import start_stream, stream_stats
    from pipeline.events import SpoolWriter, spool_dir

    spool = SpoolWriter(spool_dir(cfg), roll_seconds=3600, roll_events=5000)
    for e in events:
        spool.append(e)
    spool.close()
    t_launch = time.perf_counter()
    job = start_stream(cfg, restore=False)
    samples: list[tuple[float, int]] = []
    peak_rss = 0.0
    try:
        while True:
            consumed = stream_stats(client, cfg.redis.key_prefix)["consumed"]
            now = time.perf_counter()
            samples.append((now, consumed))
            peak_rss = max(peak_rss, tree_rss_mib(job.proc.pid))
            if consumed >= len(events):
                break
            if not job.alive():
                raise RuntimeError(f"stream job exited: {job.log_tail()}")
            if now - t_launch > 1800:
                raise RuntimeError(f"only {consumed} of {len(events)} events consumed in 30 min")
            time.sleep(0.2)
        first = next((t, c) for t, c in samples if c > 0)
        last = samples[-1]
        rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
        return {"events": len(events), "startup_seconds": round(first[0] - t_launch, 1),
                "events_per_second": round(rate, 1), "seconds": round(last[0] - first[0], 1),
                "peak_rss_mib": round(peak_rss, 1)}, job
    except BaseException:
        job.stop()
        raise


def freshness(cfg: Any, job: Any, client: Any, rate: float, seconds: float) -> dict[str, Any]:
    """Events at ``rate``/s through the gateway's spool writer; append -> online:hist visible."""
    from pipeline import keys as K
    from pipeline.events import SpoolWriter, spool_dir

    keys = K.Keys(cfg.redis.key_prefix)
    spool = SpoolWriter(spool_dir(cfg), roll_seconds=cfg.events.roll_seconds, roll_events=cfg.events.roll_events)
    n = int(rate * seconds)
    events = synthetic_events([], [1, 2, 3, 4, 5], n, seed=9, user_offset=900_000_000)
    movies = json.loads(client.get(keys.movie_ids(client.get(keys.current()).decode())))[:50]
    events = [type(e)(e.event_id, e.user_id, movies[i % len(movies)], e.rating, e.ts) for i, e in enumerate(events)]
    written: dict[int, float] = {}
    seen: dict[int, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or len(seen) < len(written):
            with lock:
                pending = [u for u in written if u not in seen]
            if pending:
                pipe = client.pipeline(transaction=False)
                for u in pending:
                    pipe.exists(keys.online_history(u))
                now = time.perf_counter()
                for u, hit in zip(pending, pipe.execute()):
                    if hit:
                        seen[u] = now
            if stop.is_set() and time.perf_counter() - stop_time[0] > 60:
                break
            time.sleep(0.01)

    stop_time = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    for i, e in enumerate(events):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            written[e.user_id] = time.perf_counter()
        spool.append(e)
    spool.close()
    stop_time[0] = time.perf_counter()
    stop.set()
    poller.join(timeout=90)
    lat = np.array([(seen[u] - written[u]) * 1000 for u in written if u in seen])
    return {"rate": rate, "events": n, "visible": int(len(lat)), "roll_seconds": cfg.events.roll_seconds,
            "monitor_interval_ms": cfg.stream.monitor_interval_ms,
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 95, 99)}}


def python_floor(cfg: Any, events: list[Any], client: Any) -> dict[str, Any]:
    """The job's work as a plain loop: parse, de-duplicate, fold, write the same keys the same way."""
    from flink_jobs.online_state import OnlineMovie, OnlineUser
    from flink_jobs.redis_io import BufferedWriter, GenreCache
    from pipeline import keys as K
    from pipeline.events import parse_event

    keys = K.Keys(cfg.redis.key_prefix)
    genres = GenreCache(client, keys)
    writer = BufferedWriter(client, cfg.stream.sink_batch)
    users: dict[int, OnlineUser] = {}
    movies: dict[int, OnlineMovie] = {}
    seen_ids: set[str] = set()
    lines = [e.to_json() for e in events]
    slide, window = cfg.stream.trending_slide_minutes * 60, cfg.stream.trending_window_minutes * 60
    t0 = time.perf_counter()
    for line in lines:
        e = parse_event(line)
        if e.event_id in seen_ids:
            continue
        seen_ids.add(e.event_id)
        user = users.setdefault(e.user_id, OnlineUser.empty(cfg.features.history_len))
        user.apply(e.movie_id, e.rating, e.ts, genres, cfg.features.genre_half_life_days, 0)
        # Lazy values, as the job writes them (encoded at flush, once per dirty key).
        writer.set(keys.online_history(e.user_id), lambda user=user: K.encode_history(user.history()))
        writer.hset(keys.online_user(e.user_id), lambda user=user: K.encode_fields(user.features()))
        movie = movies.setdefault(e.movie_id, OnlineMovie())
        movie.apply(e.rating, e.ts, slide, window, (e.ts - 1) * 1000)
        writer.hset(keys.online_movie(e.movie_id), lambda movie=movie: K.encode_fields(movie.features()))
        writer.zscore(keys.trending(), str(e.movie_id), movie.trending)
    writer.flush()
    seconds = time.perf_counter() - t0
    return {"events": len(events), "events_per_second": round(len(events) / seconds, 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="a home with a published batch (default: the serving bench's home)")
    parser.add_argument("--ratings", type=int, default=1_000_209)
    parser.add_argument("--events", type=int, default=100_000, help="events for the throughput and floor runs")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s of the freshness run")
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import redis

    from bench.serving_bench import ensure_home
    from pipeline import keys as K
    from pipeline.redis_server import redis_for_home
    from pipeline.store import RedisStore

    cfg = ensure_home(Path(args.home) if args.home else Path("bench/.home"), args.ratings)
    work = Path(cfg.home) / "bench-stream"
    shutil.rmtree(work, ignore_errors=True)
    cfg = (cfg.replace("events", spool_dir=str(work / "spool"), dead_letter_dir=str(work / "dead"))
           .replace("stream", checkpoint_dir=str(work / "checkpoints")))
    with redis_for_home(cfg) as url:
        cfg = cfg.replace("redis", url=url)
        client = redis.Redis.from_url(url)
        keys = K.Keys(cfg.redis.key_prefix)
        version = client.get(keys.current()).decode()
        movies = json.loads(client.get(keys.movie_ids(version)))
        users = list(range(1, 6041))
        events = synthetic_events(users, movies, args.events)
        store = RedisStore(client, cfg.redis.key_prefix)
        store.clear_online()
        console.print(f"throughput: {args.events:,} events through the job ...")
        tp, job = throughput(cfg, events, client)
        try:
            console.print(f"freshness: {args.rate:g} events/s for {args.fresh_seconds:g} s ...")
            fr = freshness(cfg, job, client, args.rate, args.fresh_seconds)
        finally:
            job.stop()
        store.clear_online()
        console.print("floor: the same work as a plain Python loop ...")
        floor = python_floor(cfg, events, client)
        store.clear_online()
        client.close()
    shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "stream", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": describe(),
              "flink_parallelism": cfg.stream.parallelism, "sink_batch": cfg.stream.sink_batch,
              "throughput": tp, "freshness": fr, "python_floor": floor,
              "job_vs_floor": round(tp["events_per_second"] / floor["events_per_second"], 3)}
    table = Table(title=f"stream plane ({describe()['cores']} cores, parallelism {cfg.stream.parallelism})")
    for col in ("measurement", "value"):
        table.add_column(col)
    table.add_row("Flink job, sustained", f"{tp['events_per_second']:,.0f} events/s ({tp['events']:,} events, "
                  f"start-up {tp['startup_seconds']} s, peak RSS {tp['peak_rss_mib']:.0f} MiB)")
    table.add_row("plain Python loop (floor)", f"{floor['events_per_second']:,.0f} events/s")
    table.add_row(f"freshness at {fr['rate']:g}/s (spool roll {fr['roll_seconds']} s)",
                  f"p50 {fr['p50_ms']} ms, p95 {fr['p95_ms']} ms, p99 {fr['p99_ms']} ms "
                  f"({fr['visible']}/{fr['events']} visible)")
    console.print(table)
    path = write_result(result, args.out, "stream")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

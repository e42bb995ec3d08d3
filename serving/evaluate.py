"""P1 through the running gateway: recall and ranking together, as an outside client sees them.

The offline model evaluation scores every movie with the model alone; this one asks
the real serving path, over gRPC, what docs/evaluation.md asks of it:

* full ranking: ``Recommend(user, k, exclude_seen=true)``, HR@k / NDCG@k (recall
  coverage is part of the score: a test movie recall missed cannot be a hit);
* sampled: ``Rank(user, [test] + 100 negatives)``, the same seeded negatives and users
  as the offline rows, ties counted against the model;
* rating error: RMSE / MAE of ``predicted_rating`` of the test movie.

Any degraded answer is counted and reported: numbers from a degraded gateway are not
the model's numbers.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from pipeline.evaluate import Row
from pipeline.metrics import hit_at_k, mean, ndcg_at_k, rank_of


def evaluate_gateway(data: Any, stub: Any, max_users: int | None = None, k: int = 10, n_negatives: int = 100,
                     seed: int = 0, timeout: float = 30.0,
                     on_progress: Callable[[int, int], None] | None = None) -> Row:
    from model.evaluate import sample_negatives, sample_users
    from serving.protos.recsys.v1 import recommender_pb2 as pb

    users = sample_users(data, max_users, seed)
    negatives = sample_negatives(data, users, n_negatives, seed)
    t0 = time.perf_counter()
    m: dict[str, list[float]] = {x: [] for x in ("hr", "ndcg", "shr", "sndcg", "err")}
    degraded = 0
    versions: set[str] = set()
    for i, u in enumerate(users):
        target = int(data.test.loc[u, "movie_id"])
        rec = stub.Recommend(pb.RecommendRequest(user_id=u, k=k, exclude_seen=True, explain=False), timeout=timeout)
        rank = rank_of(target, [item.movie_id for item in rec.items])
        m["hr"].append(hit_at_k(rank, k))
        m["ndcg"].append(ndcg_at_k(rank, k))
        ids = [target] + [int(x) for x in negatives[u]]
        ranked = stub.Rank(pb.RankRequest(user_id=u, movie_ids=ids), timeout=timeout)
        scores = np.array([item.score for item in ranked.items])
        sampled_rank = 1 + int(np.sum(scores[1:] >= scores[0]))
        m["shr"].append(hit_at_k(sampled_rank, k))
        m["sndcg"].append(ndcg_at_k(sampled_rank, k))
        m["err"].append(float(ranked.items[0].predicted_rating) - float(data.test.loc[u, "rating"]))
        degraded += int(rec.degraded or ranked.degraded)
        versions.add(rec.model_version)
        if on_progress:
            on_progress(i + 1, len(users))
    err = np.asarray(m["err"])
    return Row(model=f"gateway (recall + ranker v{','.join(sorted(versions))})", protocol="P1 via gRPC",
               seconds=round(time.perf_counter() - t0, 1),
               metrics={f"HR@{k}": round(mean(m["hr"]), 4), f"NDCG@{k}": round(mean(m["ndcg"]), 4),
                        f"HR@{k} sampled": round(mean(m["shr"]), 4), f"NDCG@{k} sampled": round(mean(m["sndcg"]), 4),
                        "RMSE": round(float(np.sqrt(np.mean(err ** 2))), 4) if len(err) else 0.0,
                        "MAE": round(float(np.mean(np.abs(err))), 4) if len(err) else 0.0},
               notes=f"{degraded} degraded answers" if degraded else "")


# --- P3: streaming replay ---------------------------------------------------------------------
def held_back_events(cfg: Any, max_events: int | None) -> Any:
    """The replayed events of a ``p3`` build, in time order (the first ``max_events``: a contiguous slice)."""
    import pandas as pd

    from pipeline.evaluate import EvaluationError
    from pipeline.home import Home, table_path

    home = Home(cfg.home)
    version = home.current_version()
    if version is None or home.read_manifest(version).get("split") != "p3":
        raise EvaluationError("P3 needs a streaming-replay build: run `recsys batch --split p3`, `recsys train` "
                              "and `recsys export` first")
    held = pd.read_parquet(table_path(home, version, "interactions"), filters=[("split", "==", "test")],
                           columns=["user_id", "movie_id", "rating", "ts", "line"])
    held = held.sort_values(["ts", "line"], kind="stable").reset_index(drop=True)
    return held.head(max_events) if max_events else held


def replay_p3(stub: Any, events: Any, k: int, sync: "StreamSync | None" = None, timeout: float = 30.0,
              on_progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Before each event ``Recommend(user, k)``, then ``RecordRating`` it.

    With a ``sync`` (stream on), a request first waits until the user's earlier events are applied.
    """
    from serving.protos.recsys.v1 import recommender_pb2 as pb

    hits, ndcg, degraded = [], [], 0
    rows = list(events.itertuples(index=False))
    for i, e in enumerate(rows):
        if sync is not None:
            sync.before_recommend(int(e.user_id))
        rec = stub.Recommend(pb.RecommendRequest(user_id=int(e.user_id), k=k, explain=False), timeout=timeout)
        rank = rank_of(int(e.movie_id), [item.movie_id for item in rec.items])
        hits.append(hit_at_k(rank, k))
        ndcg.append(ndcg_at_k(rank, k))
        degraded += int(rec.degraded)
        stub.RecordRating(pb.RecordRatingRequest(user_id=int(e.user_id), movie_id=int(e.movie_id),
                                                 rating=float(e.rating), timestamp=int(e.ts)), timeout=timeout)
        if sync is not None:
            sync.recorded_event(int(e.user_id), int(e.movie_id), int(e.ts))
        if on_progress:
            on_progress(i + 1, len(rows))
    return {f"HR@{k}": round(mean(hits), 4), f"NDCG@{k}": round(mean(ndcg), 4), "events": len(rows),
            "degraded": degraded}


class StreamSync:
    """Stream-on replay: before a user's request, their earlier events must be in Redis.

    On MovieLens a user's next rating comes seconds to minutes after the previous one,
    longer than the job's freshness (about a second, see the stream benchmark), so in
    live traffic every request sees the user's earlier ratings. A replay runs faster
    than real time; waiting for the job whenever the requesting user has an event in
    flight gives each request what it would see live, without a wall-clock pace.
    """

    def __init__(self, job: Any, stack: Any, prefix: str) -> None:
        from pipeline import keys as K

        self.job, self.stack, self.keys = job, stack, K.Keys(prefix)
        self.recorded = 0
        self.pending: dict[int, tuple[int, int]] = {}  # user -> (movie, ts) of their latest recorded event
        self.waits = 0

    def recorded_event(self, user_id: int, movie_id: int, ts: int) -> None:
        self.recorded += 1
        self.pending[user_id] = (movie_id, ts)

    def before_recommend(self, user_id: int) -> None:
        from pipeline import keys as K

        last = self.pending.get(user_id)
        if last is None:
            return
        self.waits += 1
        self.stack.events.flush()
        self.job.wait_until_consumed(timeout=300, expected=self.recorded, checkpoint=False)
        client = self.stack.store.client
        end = time.monotonic() + 10  # features trail the counters by at most one bundle
        while time.monotonic() < end:
            hist = K.decode_history(client.get(self.keys.online_history(user_id)))
            if any(m == last[0] and t == last[1] for m, _, t in hist):
                break
            time.sleep(0.02)
        self.pending.clear()  # everything recorded so far is applied


def evaluate_p3(cfg: Any, max_events: int | None = 2000, k: int = 10,
                on_progress: Callable[[str, int, int], None] | None = None) -> list[Row]:
    """HR@k of Recommend before each replayed event, with the stream job off, then on.

    Both runs use the same gateway, model and batch publish and start from the same
    state (online keys cleared before and after). With the stream on, a request waits
    until the requesting user's earlier events are applied (``StreamSync``).
    """
    import shutil

    import grpc

    from flink_jobs.control import start_stream
    from pipeline.home import Home
    from serving.app import serving_stack, wait_for_model
    from serving.protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

    events = held_back_events(cfg, max_events)
    work = Home(cfg.home).root / "eval" / "p3"
    rows = []
    for mode in ("off", "on"):
        shutil.rmtree(work / mode, ignore_errors=True)
        run_cfg = (cfg.replace("serving", bind="127.0.0.1", grpc_port=0, http_port=0, model_port=0)
                   .replace("events", spool_dir=str(work / mode / "spool"), dead_letter_dir=str(work / mode / "dead"),
                            roll_seconds=0.2)
                   .replace("stream", checkpoint_dir=str(work / mode / "checkpoints"), monitor_interval_ms=100))
        t0 = time.perf_counter()
        sync = None
        with serving_stack(run_cfg) as stack:
            wait_for_model(stack)
            stack.store.clear_online()  # both runs start from the batch state only
            job = start_stream(run_cfg, restore=False) if mode == "on" else None
            try:
                with grpc.insecure_channel(stack.grpc_target) as channel:
                    sync = StreamSync(job, stack, cfg.redis.key_prefix) if job is not None else None
                    metrics = replay_p3(pb_grpc.RecommenderStub(channel), events, k, sync,
                                        on_progress=(lambda i, n: on_progress(f"stream {mode}", i, n)) if on_progress else None)
            finally:
                if job is not None:
                    job.stop()
                stack.store.clear_online()
        notes = [f"{metrics['degraded']} degraded answers"] if metrics["degraded"] else []
        if sync is not None:
            notes.append(f"{sync.waits} waits for the stream job")
        rows.append(Row(model=f"gateway, stream job {mode}", protocol="P3 replay",
                        seconds=round(time.perf_counter() - t0, 1),
                        metrics={f"HR@{k}": metrics[f"HR@{k}"], f"NDCG@{k}": metrics[f"NDCG@{k}"],
                                 "events": metrics["events"]}, notes="; ".join(notes)))
    return rows

"""P1 through the running gateway: recall and ranking together, as an outside client sees them.

The offline model evaluation scores every movie with the model alone; this one asks
the real serving path, over gRPC, what EVALUATION.md asks of it:

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

"""Recall channels and how they merge: shared by the gateway and the evaluator.

A channel is a small named function: given what is known of the user (a
``RecallContext``) and read access to the published lists (a ``RecallStore``), it
returns up to ``quota`` scored movie ids the user has not seen. Channels are listed
in config (``recall.channels``) and merged by reciprocal-rank fusion, so a movie
proposed by several channels rises, every channel gets places near the top, and the
merged order is a sensible ranking on its own (the gateway's fallback when the model
is down). A user without history gets ``recall.cold_start_channels``.

Example::

    ctx = RecallContext(user_id=7, history=[(1, 4.0, 978300760)], age_bucket=25, gender="F")
    candidates = merge(ctx, store, cfg.recall)   # [Candidate(movie_id, score, sources), ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from pipeline import keys as K

Scored = list[tuple[int, float]]
RRF_K = 60.0  # reciprocal-rank-fusion constant (Cormack et al. 2009)
# Per-user lists a store reads together with the user's context (one round trip per request, not one per list).
USER_LISTS = ("als",)


class RecallStore(Protocol):
    """Read access to published lists (Redis in production, dicts in tests)."""

    def user_list(self, name: str, user_id: int) -> Scored: ...

    def item_lists(self, name: str, movie_ids: Sequence[int]) -> dict[int, Scored]: ...

    def global_list(self, name: str) -> Scored: ...

    def trending(self, n: int) -> Scored: ...


@dataclass
class RecallContext:
    """What recall knows about the user at request time."""

    user_id: int | None
    history: list[tuple[int, float, int]] = field(default_factory=list)  # oldest first
    age_bucket: int | None = None
    gender: str | None = None
    top_genres: list[str] = field(default_factory=list)
    exclude: set[int] = field(default_factory=set)
    user_lists: dict[str, Scored] = field(default_factory=dict)  # USER_LISTS already read with the context

    @property
    def is_cold(self) -> bool:
        return not self.history


@dataclass
class Candidate:
    movie_id: int
    score: float
    sources: list[str]


def _take(items: Iterable[tuple[int, float]], exclude: set[int], quota: int) -> Scored:
    out: Scored = []
    seen: set[int] = set()
    for movie_id, score in items:
        if movie_id in exclude or movie_id in seen:
            continue
        seen.add(movie_id)
        out.append((movie_id, score))
        if len(out) >= quota:
            break
    return out


def _from_recent_items(list_name: str, ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Score movies related to the user's latest movies; more recent seeds weigh more."""
    seeds: list[int] = []
    for movie_id, _, _ in reversed(ctx.history):
        if movie_id not in seeds:
            seeds.append(movie_id)
        if len(seeds) >= recent:
            break
    if not seeds:
        return []
    lists = store.item_lists(list_name, seeds)
    scores: dict[int, float] = {}
    for position, seed in enumerate(seeds):
        weight = 1.0 / (1.0 + position)
        for movie_id, score in lists.get(seed, []):
            scores[movie_id] = scores.get(movie_id, 0.0) + weight * score
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return _take(ranked, ctx.exclude, quota)


def sequential(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """What other users rated right after the movies this user rated last."""
    return _from_recent_items("next", ctx, store, quota, recent)


def item_similar(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Movies similar (item factors / item2vec) to the movies this user rated last."""
    return _from_recent_items("similar", ctx, store, quota, recent)


def als(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Collaborative filtering: the user's ALS top-N, computed by the batch plane."""
    if ctx.user_id is None:
        return []
    listed = ctx.user_lists["als"] if "als" in ctx.user_lists else store.user_list("als", ctx.user_id)
    return _take(listed, ctx.exclude, quota)


def interleave(lists: Sequence[Scored], exclude: set[int], quota: int) -> Scored:
    """Round-robin over several lists (first of each, then second of each, ...), de-duplicated."""
    merged = []
    for rank in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if rank < len(lst):
                movie_id, _ = lst[rank]
                merged.append((movie_id, 1.0 / (1 + rank)))
    return _take(merged, exclude, quota)


def genre_popular(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Popular movies in the user's strongest genres (or their declared interests)."""
    genres = ctx.top_genres[:3]
    return interleave([store.global_list(K.list_popular(g)) for g in genres], ctx.exclude, quota)


def demographic_popular(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Popular among users of the same age bucket and gender."""
    if ctx.age_bucket is None and ctx.gender is None:
        return []
    return _take(store.global_list(K.list_demographic(ctx.age_bucket, ctx.gender)), ctx.exclude, quota)


def popular(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Most rated overall: the last-resort fallback that always has candidates."""
    return _take(store.global_list(K.list_popular()), ctx.exclude, quota)


def toprated(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Highest Bayesian-mean rating overall (and in the user's genres)."""
    lists = [store.global_list(K.list_toprated(g)) for g in ctx.top_genres[:2]] + [store.global_list(K.list_toprated())]
    return interleave(lists, ctx.exclude, quota)


def trending(ctx: RecallContext, store: RecallStore, quota: int, recent: int) -> Scored:
    """Most rated in the stream's sliding window (empty until the stream job runs)."""
    return _take(store.trending(quota + len(ctx.exclude)), ctx.exclude, quota)


ChannelFn = Callable[[RecallContext, RecallStore, int, int], Scored]
CHANNELS: dict[str, ChannelFn] = {
    "sequential": sequential,
    "item_similar": item_similar,
    "als": als,
    "genre_popular": genre_popular,
    "demographic_popular": demographic_popular,
    "popular": popular,
    "toprated": toprated,
    "trending": trending,
}


def run_channels(ctx: RecallContext, store: RecallStore, recall_cfg) -> dict[str, Scored]:  # noqa: ANN001
    """Each configured channel's candidates (cold-start channels for a user without history)."""
    names = recall_cfg.cold_start_channels if ctx.is_cold else recall_cfg.channels
    default_quota = recall_cfg.merged_size
    return {name: CHANNELS[name](ctx, store, int(recall_cfg.quotas.get(name, default_quota)), recall_cfg.recent_items)
            for name in names}


# The gateway's channel of the model's own next-movie list (the export's next_movies signature).
MODEL_CHANNEL = "next_model"


def kept_channels(serving_cfg) -> tuple[str, ...]:  # noqa: ANN001
    """Channels ``fuse`` never cuts: the model's own list when ``serving.model_recall_kept`` (see its help)."""
    return (MODEL_CHANNEL,) if serving_cfg.model_recall_kept else ()


def fuse(per_channel: dict[str, Scored], size: int, kept: Sequence[str] = ()) -> list[Candidate]:
    """Reciprocal-rank fusion of channel lists into at most ``size`` candidates, plus the ``kept`` channels whole.

    A kept channel's movies take part in the fusion like any other (a movie several channels propose still
    rises), and those the cut at ``size`` would drop join after it, in that channel's order. Why: the model's
    next-movie list is ordered by the very model that ranks, so fusing it with seven heuristic lists and cutting
    keeps only its first few dozen, and the ranker never sees movies it would have put in the top 10.
    """
    scores: dict[int, float] = {}
    sources: dict[int, list[str]] = {}
    for name, items in per_channel.items():
        for rank, (movie_id, _) in enumerate(items):
            scores[movie_id] = scores.get(movie_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            sources.setdefault(movie_id, []).append(name)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    chosen = {m for m, _ in ranked}
    for name in kept:
        for movie_id, _ in per_channel.get(name, []):
            if movie_id not in chosen:
                chosen.add(movie_id)
                ranked.append((movie_id, scores[movie_id]))
    return [Candidate(movie_id=m, score=round(s, 6), sources=sources[m]) for m, s in ranked]


def merge(ctx: RecallContext, store: RecallStore, recall_cfg) -> list[Candidate]:  # noqa: ANN001
    """The merged candidate list the ranking model sees."""
    return fuse(run_channels(ctx, store, recall_cfg), recall_cfg.merged_size)

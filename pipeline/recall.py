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
    candidates = merge(ctx, store, cfg.recall)   # Fused: candidates[i].movie_id / .score / .sources; .ids, .scores
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence

import numpy as np

from pipeline import keys as K

Scored = list[tuple[int, float]]
RRF_K = 60.0  # reciprocal-rank-fusion constant (Cormack et al. 2009)
_first, _second = operator.itemgetter(0), operator.itemgetter(1)
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


class Candidate(NamedTuple):
    """A merged candidate: its fused (reciprocal-rank) score and the channels that proposed it.

    A tuple, with ``sources`` decoded on use from a bit mask over the fused channel names: a Recommend fuses
    ~2,000 channel entries into ~460 candidates and reads the sources of the ten it answers with (a dataclass
    with a list per candidate cost ~0.7 ms of the gateway's time per request).
    """

    movie_id: int
    score: float
    channel_mask: int = 0
    channels: tuple[str, ...] = ()

    @property
    def sources(self) -> list[str]:
        """The proposing channels, in the order they were fused."""
        return [name for bit, name in enumerate(self.channels) if self.channel_mask >> bit & 1]


class Fused(SequenceABC):
    """``fuse``'s answer: a sequence of ``Candidate`` built on access, over plain lists a caller can read whole
    (``ids``, ``scores``): the gateway reads those for ~460 candidates and builds ten candidates."""

    def __init__(self, ids: list[int], scores: list[float], masks: list[int], channels: tuple[str, ...]) -> None:
        self.ids, self.scores, self.masks, self.channels = ids, scores, masks, channels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Candidate:  # type: ignore[override] - no slices: nobody needs them
        return Candidate(self.ids[i], self.scores[i], self.masks[i], self.channels)

    def __repr__(self) -> str:
        return f"Fused({list(self)!r})"


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
    """Score movies related to the user's latest movies; more recent seeds weigh more.

    A movie's score is the sum over seeds of ``score / (1 + seed position)``, summed in seed order (as a loop
    over the lists would, so equal sums stay equal floats); ties go to the lower movie id.
    """
    seeds: list[int] = []
    for movie_id, _, _ in reversed(ctx.history):
        if movie_id not in seeds:
            seeds.append(movie_id)
        if len(seeds) >= recent:
            break
    if not seeds:
        return []
    lists = store.item_lists(list_name, seeds)
    parts = [lists.get(seed, []) for seed in seeds]
    lens = [len(p) for p in parts]
    n = sum(lens)
    if not n:
        return []
    flat = list(itertools.chain.from_iterable(parts))
    ids = np.fromiter(map(_first, flat), np.int64, n)
    values = np.repeat(1.0 / (1.0 + np.arange(len(seeds))), lens) * np.fromiter(map(_second, flat), np.float64, n)
    uniq, where = np.unique(ids, return_inverse=True)
    total = np.bincount(where, weights=values, minlength=len(uniq))
    order = np.lexsort((uniq, -total))
    return _take(zip(uniq[order].tolist(), total[order].tolist()), ctx.exclude, quota)


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


def _round_robin(lists: Sequence[Scored]) -> Iterable[tuple[int, float]]:
    for rank in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if rank < len(lst):
                yield lst[rank][0], 1.0 / (1 + rank)


def interleave(lists: Sequence[Scored], exclude: set[int], quota: int) -> Scored:
    """Round-robin over several lists (first of each, then second of each, ...), de-duplicated; lazily, so
    three 300-long lists cut at a quota of 100 cost ~100 steps, not 900."""
    return _take(_round_robin(lists), exclude, quota)


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


def _rrf(per_channel: dict[str, Scored]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(distinct movie ids, their fused scores, their channel bit masks, the entries' positions among the
    distinct ids, each channel's ids): reciprocal-rank fusion in numpy (a Recommend fuses ~2,000 entries)."""
    lists = [np.fromiter(map(_first, items), np.int64, len(items)) for items in per_channel.values()]
    if not lists or not sum(len(x) for x in lists):
        empty = np.zeros(0, np.int64)
        return empty, np.zeros(0), empty, empty, lists
    ids = np.concatenate(lists)
    ranks = np.concatenate([np.arange(len(x)) for x in lists])
    bits = np.repeat(np.left_shift(1, np.arange(len(lists), dtype=np.int64)), [len(x) for x in lists])
    uniq, where = np.unique(ids, return_inverse=True)
    # summed in entry order, as a Python loop over the channels would: equal scores stay equal floats
    scores = np.zeros(len(uniq))
    np.add.at(scores, where, 1.0 / (RRF_K + ranks + 1))
    masks = np.zeros(len(uniq), np.int64)
    np.bitwise_or.at(masks, where, bits)
    return uniq, scores, masks, where, lists


def fused_ids(per_channel: dict[str, Scored], size: int) -> list[int]:
    """The ids ``fuse(per_channel, size)`` answers, in its order (without building candidates)."""
    uniq, scores, _, _, _ = _rrf(per_channel)
    return uniq[np.lexsort((uniq, -scores))[:size]].tolist()


def fuse(per_channel: dict[str, Scored], size: int, kept: Sequence[str] = ()) -> Fused:
    """Reciprocal-rank fusion of channel lists into at most ``size`` candidates, plus the ``kept`` channels whole.

    A kept channel's movies take part in the fusion like any other (a movie several channels propose still
    rises), and those the cut at ``size`` would drop join after it, in that channel's order. Why: the model's
    next-movie list is ordered by the very model that ranks, so fusing it with seven heuristic lists and cutting
    keeps only its first few dozen, and the ranker never sees movies it would have put in the top 10.
    Order: fused score descending, then movie id (a channel listing a movie twice adds to its score twice).
    """
    uniq, scores, masks, where, lists = _rrf(per_channel)
    order = np.lexsort((uniq, -scores))[:size]
    names = tuple(per_channel)
    for name in kept:
        if name not in per_channel:
            continue
        chosen = np.zeros(len(uniq), bool)
        chosen[order] = True
        start = sum(len(x) for x in lists[:names.index(name)])
        pos = where[start:start + len(per_channel[name])]
        first = np.unique(pos, return_index=True)[1]       # a movie listed twice joins once, at its first place
        pos = pos[np.sort(first)]
        order = np.concatenate([order, pos[~chosen[pos]]])
    return Fused(uniq[order].tolist(), [round(x, 6) for x in scores[order].tolist()], masks[order].tolist(), names)


def merge(ctx: RecallContext, store: RecallStore, recall_cfg) -> Fused:  # noqa: ANN001
    """The merged candidate list the ranking model sees."""
    return fuse(run_channels(ctx, store, recall_cfg), recall_cfg.merged_size)

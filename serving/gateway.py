"""The gateway's logic, independent of transport: recall -> filter -> features -> rank -> blend -> explain.

The gRPC servicer and the HTTP mirror are thin adapters over ``Gateway``; both get
the same answers, errors and degraded modes. The gateway reads through the online
store interface (``pipeline.store.OnlineStore``: Redis in production, a dictionary
store in unit tests) and ranks through a ``RankingClient``; it builds neither.

Dependencies fail; the gateway does not:

* the model server down or slow (``ModelUnavailable``): the merged recall order
  answers, ``degraded=True``;
* Redis down or slow (``StoreUnavailable``): the popular list of the last batch
  version seen, held in memory, answers, ``degraded=True``;
* both recover by themselves: the Redis client and the gRPC channel reconnect on the
  next call.

A user without history (unknown, or known only by demographics) gets the cold-start
channels. Their order is kept by default rather than re-ranked by the model: the
model's cold-user slice measured worse than plain popularity (README, "Known
limits"); ``serving.rank_cold_start`` switches model ranking on for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from model.signature import UserInput, build_request, build_user_request
from pipeline import keys as K
from pipeline import recall as R
from pipeline.config import Config
from pipeline.events import EventError, EventLog, RatingEvent, new_event
from pipeline.schemas import normalise_genre
from pipeline.store import NotPublished, OnlineStore, StoreUnavailable
from serving.blend import blend, cap_genres, distinctive_history, reasons_for
from serving.catalog import MovieCatalog
from serving.idempotency import KeyInProgress, KeyReused, RecentKeys
from serving.metrics import GatewayMetrics
from serving.profile import Profile, with_profile
from serving.ranking_client import ModelUnavailable, Ranking, RankingClient
from serving.versions import BatchView, VersionTracker

MAX_RANK_IDS = 1000
DEFAULT_K = 10


class InvalidArgument(ValueError):
    """The caller's request is wrong; the message names what (gRPC INVALID_ARGUMENT, HTTP 400)."""


class NotFound(LookupError):
    """A named thing does not exist (gRPC NOT_FOUND, HTTP 404)."""


class Unavailable(RuntimeError):
    """Nothing can answer: no batch version was ever readable (gRPC UNAVAILABLE, HTTP 503)."""


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed before the answer was ready (gRPC DEADLINE_EXCEEDED, HTTP 504)."""


# The caller-facing errors and their gRPC status names: both transports map from this one table.
ERROR_CODES: dict[type[Exception], str] = {InvalidArgument: "INVALID_ARGUMENT", NotFound: "NOT_FOUND",
                                           Unavailable: "UNAVAILABLE", DeadlineExceeded: "DEADLINE_EXCEEDED"}


def error_code(exc: Exception) -> str | None:
    """The status name of a caller-facing error, None for anything else (a bug: INTERNAL)."""
    return next((code for cls, code in ERROR_CODES.items() if isinstance(exc, cls)), None)


def _check_deadline(deadline: float | None, stage: str) -> None:
    """DeadlineExceeded when the caller's deadline has passed (checked between stages: no work for nobody)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the deadline passed during {stage}")


def _model_budget(deadline: float | None) -> float | None:
    """Seconds a model call may take (5 ms of the caller's deadline kept for the answer), None without a
    deadline; DeadlineExceeded when nothing is left."""
    remaining = None if deadline is None else deadline - time.monotonic() - 0.005
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the deadline passed before ranking")
    return remaining


@dataclass
class Item:
    movie_id: int
    title: str
    score: float
    predicted_rating: float = 0.0
    sources: list[str] = field(default_factory=list)
    reason: str = ""
    genres: list[str] = field(default_factory=list)
    year: int = 0


def catalog_item(catalog: MovieCatalog, movie_id: int, score: float, **fields: Any) -> Item:
    """An answer item with the movie's title, genres and year from the catalog."""
    movie = catalog.movies.get(movie_id)
    return Item(movie_id=movie_id, title=catalog.title(movie_id), score=score, genres=list(catalog.genres(movie_id)),
                year=(movie.year or 0) if movie else 0, **fields)


@dataclass
class Answer:
    items: list[Item]
    model_version: str = ""
    degraded: bool = False
    batch_version: str = ""
    cold_start: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (benchmarks, logs)


class Gateway:
    """Recommend, Rank, SimilarMovies, RecordRating and health over a store, a ranking client and an event log.

    ``store`` is any ``OnlineStore`` (its ``at_version`` views are what requests read);
    ``load_catalog`` builds a version's in-memory movie catalog from such a view.
    """

    def __init__(self, cfg: Config, store: OnlineStore, ranking: RankingClient, events: EventLog | None,
                 metrics: GatewayMetrics | None = None,
                 load_catalog: Callable[[OnlineStore], MovieCatalog] = MovieCatalog.load) -> None:
        self.cfg, self.store, self.ranking, self.events = cfg, store, ranking, events
        self.metrics = metrics or GatewayMetrics()
        self.versions = VersionTracker(store, cfg.serving.version_check_seconds, load_catalog)
        self.recall_cfg = replace(cfg.recall, merged_size=cfg.serving.candidates)
        self.history_len = cfg.samples.history_len
        self.title_len = cfg.features.title_max_tokens
        self.recent_keys = RecentKeys(cfg.serving.idempotency_keys, cfg.serving.idempotency_hours * 3600.0)

    def current_catalog(self) -> MovieCatalog:
        """The movie catalog of the version requests read now (titles for a console, say)."""
        return self.versions.view().catalog

    # --- validation -----------------------------------------------------------------------
    def _k(self, k: int) -> int:
        if k == 0:
            return DEFAULT_K
        if not 1 <= k <= self.cfg.serving.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.cfg.serving.max_k}, got {k}")
        return k

    @staticmethod
    def _id(name: str, value: int) -> int:
        if value < 1:
            raise InvalidArgument(f"{name} must be a positive integer, got {value}")
        return int(value)

    @staticmethod
    def _genres(genres: Sequence[str]) -> list[str]:
        out = []
        for g in genres:
            try:
                name = normalise_genre(g)
            except ValueError:
                raise InvalidArgument(f"unknown genre {g!r}") from None
            if name and name not in out:
                out.append(name)
        return out

    # --- dependencies ---------------------------------------------------------------------
    def _view_or_fallback(self, method: str) -> tuple[BatchView, bool]:
        """(view, degraded): the current view, or the last good one when Redis fails."""
        try:
            return self.versions.view(), False
        except NotPublished as exc:
            raise Unavailable(str(exc)) from None
        except StoreUnavailable:
            last = self.versions.last_good
            if last is None:
                raise Unavailable("Redis is unreachable and no published version was read before") from None
            if method != "recommend":  # Recommend counts in _popular_answer
                self.metrics.degraded.labels(method, "redis").inc()
            return last, True

    def _rank(self, user: UserInput, ids: list[int], view: BatchView, deadline: float | None) -> Ranking:
        """Score ``ids`` for ``user``: candidate ids only (``rank_ids``) where that is exact, else every
        candidate's features from the catalog (``serving.precomputed_candidates``)."""
        remaining = _model_budget(deadline)

        def full() -> dict[str, np.ndarray]:
            return build_request(user, view.catalog.movie_inputs(ids), self.history_len, self.title_len)

        if self.cfg.serving.precomputed_candidates:
            result = self.ranking.rank_ids(build_user_request(user, self.history_len),
                                           np.asarray([ids], np.int64), K.batch_version_of(view.store.version), full,
                                           timeout_s=remaining)
        else:
            result = self.ranking.rank(full(), timeout_s=remaining)
        self.metrics.set_model_version(result.model_version)
        return result

    @staticmethod
    def _user_stats(feats: dict[str, Any], history: list[tuple[int, float, int]]) -> tuple[float, float]:
        """(count, mean) of all the user's ratings: the batch statistics plus the stream's since.

        Training sees the count and mean of *all* earlier ratings, not of the truncated
        history, so serving sends the same; without published statistics (a user the
        batch never saw), the history is all there is.
        """
        n_b, mean_b = float(feats.get("n_ratings") or 0), float(feats.get("mean_rating") or 0.0)
        online = feats.get("online") or {}
        n_o, mean_o = float(online.get("n_ratings") or 0), float(online.get("mean_rating") or 0.0)
        if n_b + n_o > 0:
            return n_b + n_o, (n_b * mean_b + n_o * mean_o) / (n_b + n_o)
        return float(len(history)), float(np.mean([r for _, r, _ in history])) if history else 0.0

    def _user_input(self, user_id: int, ctx: R.RecallContext, feats: dict[str, Any]) -> UserInput:
        n, mean = self._user_stats(feats, ctx.history)
        return UserInput(user_id=user_id, age_bucket=int(feats.get("age_bucket") or 0), gender=feats.get("gender") or "",
                         occupation=feats.get("occupation") or "", history=[(m, r) for m, r, _ in ctx.history],
                         interest_genres=list(feats.get("top_genres") or ctx.top_genres), n_ratings=n, mean_rating=mean)

    # --- Recommend ------------------------------------------------------------------------
    def recommend(self, user_id: int, k: int = 0, exclude_seen: bool = True, genres: Sequence[str] = (),
                  explain: bool = True, deadline: float | None = None, profile: Profile | None = None) -> Answer:
        """``profile``: what a web account declared, filling gaps in the user's published features."""
        user_id, k, wanted = self._id("user_id", user_id), self._k(k), self._genres(genres)
        view, degraded = self._view_or_fallback("recommend")
        if degraded:
            return self._popular_answer(view, k, wanted)
        stages: dict[str, float] = {}
        ctx: R.RecallContext | None = None
        try:
            t = time.perf_counter()
            ctx, feats = with_profile(*view.store.user_context(user_id, history_len=self.cfg.features.history_len),
                                      profile)
            stages["features"] = time.perf_counter() - t
            _check_deadline(deadline, "reading the user's features")
            t = time.perf_counter()
            if not exclude_seen:
                ctx.exclude = set()
            per_channel = self._channels(view, ctx, wanted)
            stages["recall"] = time.perf_counter() - t
            _check_deadline(deadline, "recall")
        except StoreUnavailable:
            return self._popular_answer(view, k, wanted, exclude=ctx.exclude if ctx else set())
        t = time.perf_counter()
        candidates, ranking, degraded = self._model_recall_and_rank(view, ctx, self._user_input(user_id, ctx, feats),
                                                                    per_channel, wanted, deadline)
        stages["rank"] = time.perf_counter() - t
        self.metrics.candidates.observe(len(candidates))
        answer = self._blend(view, ctx, feats, candidates, ranking, degraded, k, explain, stages)
        answer.cold_start = ctx.is_cold
        self._observe(answer)
        return answer

    def _channels(self, view: BatchView, ctx: R.RecallContext, wanted: Sequence[str] = ()) -> dict[str, R.Scored]:
        """Every configured recall channel's movies for ``ctx`` (the model's own channel aside), each filtered to
        recommendable movies (and to ``wanted`` genres, whose popular lists then join)."""
        per_channel = R.run_channels(ctx, view.store, self.recall_cfg)
        if wanted:
            # the requested genres' popular lists join, and every channel keeps only those genres
            per_channel["genre_popular"] = R.interleave(
                [view.store.global_list(K.list_popular(g)) for g in wanted], ctx.exclude, self.recall_cfg.merged_size)
        return {name: self._recommendable(view, items, wanted) for name, items in per_channel.items()}

    @staticmethod
    def _recommendable(view: BatchView, items: R.Scored, wanted: Sequence[str]) -> R.Scored:
        catalog, ok, asked = view.catalog, view.catalog.recommendable_ids, set(wanted)
        if not asked:
            return [(m, sc) for m, sc in items if m in ok]
        return [(m, sc) for m, sc in items if m in ok and not asked.isdisjoint(catalog.genres(m))]

    def _model_channel(self, view: BatchView, ctx: R.RecallContext, listed: R.Scored,
                       wanted: Sequence[str]) -> R.Scored:
        """The model's next movies as a channel: unseen ones first-come, cut at ``serving.model_recall``,
        recommendable ones (and of ``wanted`` genres) only."""
        unseen = [(m, s) for m, s in listed if m not in ctx.exclude][: self.cfg.serving.model_recall]
        return self._recommendable(view, unseen, wanted)

    def _fuse(self, per_channel: dict[str, R.Scored]) -> R.Fused:
        return R.fuse(per_channel, self.recall_cfg.merged_size, R.kept_channels(self.cfg.serving))

    def _with_model_channel(self, ctx: R.RecallContext) -> bool:
        return self.cfg.serving.model_recall > 0 and bool(ctx.history)

    def candidates(self, view: BatchView, ctx: R.RecallContext, wanted: Sequence[str] = (),
                   deadline: float | None = None) -> R.Fused:
        """What Recommend ranks for ``ctx``: every recall channel, the sequence model's (``next_movies``)
        included, fused. The two-call path's recall (``_model_recall_and_rank``); the one-call path reaches the
        same list."""
        per_channel = self._channels(view, ctx, wanted)
        if self._with_model_channel(ctx):
            per_channel[R.MODEL_CHANNEL] = self._model_channel(view, ctx, self._model_recall(ctx, deadline), wanted)
        return self._fuse(per_channel)

    def sent_in_one_call(self, per_channel: dict[str, R.Scored]) -> list[int]:
        """The candidate ids the one-call path sends with ``recommend``: the channels without the model's,
        fused and cut at ``merged_size`` (``_rank_in_one_call`` says why that is enough). Also what the serving
        bench's "Predict alone" requests carry."""
        return R.fused_ids(per_channel, self.recall_cfg.merged_size)

    def _model_recall_and_rank(self, view: BatchView, ctx: R.RecallContext, user: UserInput,
                               per_channel: dict[str, R.Scored], wanted: Sequence[str],
                               deadline: float | None) -> tuple[R.Fused, Ranking | None, bool]:
        """(candidates, their ranking, degraded): the model's next movies join the recall channels, then every
        candidate is ranked; in one model call where the export and the served version allow it
        (``_rank_in_one_call``), else two (``next_movies``, then ``rank_ids`` or ``serving_default``)."""
        if self._with_model_channel(ctx) and self.cfg.serving.precomputed_candidates:
            try:
                done = self._rank_in_one_call(view, ctx, user, per_channel, wanted, deadline)
            except ModelUnavailable:
                self.metrics.degraded.labels("recommend", "model").inc()
                return self._fuse(per_channel), None, True
            if done is not None:
                return done[0], done[1], False
        if self._with_model_channel(ctx):
            per_channel[R.MODEL_CHANNEL] = self._model_channel(view, ctx, self._model_recall(ctx, deadline), wanted)
        candidates = self._fuse(per_channel)
        if not candidates:
            return candidates, None, False
        try:
            return candidates, self._rank(user, candidates.ids, view, deadline), False
        except ModelUnavailable:
            self.metrics.degraded.labels("recommend", "model").inc()
            return candidates, None, True

    def _rank_in_one_call(self, view: BatchView, ctx: R.RecallContext, user: UserInput,
                          per_channel: dict[str, R.Scored], wanted: Sequence[str],
                          deadline: float | None) -> tuple[R.Fused, Ranking] | None:
        """The model channel and ranking from one ``recommend`` call; None when the export cannot (no such
        signature, or its candidate table is of another batch version): then two calls answer.

        Sent: the other channels fused alone and cut at ``merged_size`` (``sent_in_one_call``). The call ranks
        those and the model's own next movies. That is every movie the full fusion can keep: the model channel
        only adds to a movie's fused score, so a movie outside the cut and outside the model's list still has
        ``merged_size`` movies above it once the model channel joins, and the full fusion keeps its top
        ``merged_size`` plus the model's list. So the candidates, their recall scores and sources are those
        of the two-call path, and each candidate's row is taken from whichever list ranked it.
        """
        remaining = _model_budget(deadline)
        sent = self.sent_in_one_call(per_channel)
        got = self.ranking.recommend(
            build_user_request(user, self.history_len), np.asarray([sent], np.int64),
            K.batch_version_of(view.store.version),
            lambda: build_request(user, view.catalog.movie_inputs(sent), self.history_len, self.title_len),
            timeout_s=remaining)
        if got is None:
            return None
        self.metrics.set_model_version(got.ranking.model_version)
        per_channel[R.MODEL_CHANNEL] = self._model_channel(view, ctx, got.next_movies, wanted)
        candidates = self._fuse(per_channel)
        row = {m: len(sent) + j for j, (m, _) in enumerate(got.next_movies)}
        row.update((m, i) for i, m in enumerate(sent))
        rows = np.fromiter(map(row.__getitem__, candidates.ids), np.int64, len(candidates))
        a, b = got.ranking, got.next_ranking
        return candidates, Ranking(score=np.concatenate([a.score, b.score])[rows],
                                   rating=np.concatenate([a.rating, b.rating])[rows],
                                   attention=np.concatenate([a.attention, b.attention])[rows],
                                   model_version=a.model_version)

    def _model_recall(self, ctx: R.RecallContext, deadline: float | None) -> R.Scored:
        """The sequence model's next movies for this history (``next_movies``), as the model returns them.

        It reads the live history (batch + stream), so a rating made a second ago already moves this channel.
        A model server that cannot answer leaves the channel empty: the other channels still recall, and
        ranking then reports the outage.
        """
        try:
            remaining = _model_budget(deadline)
        except DeadlineExceeded:
            return []
        try:
            return self.ranking.next_movies([m for m, _, _ in ctx.history], self.history_len, timeout_s=remaining)
        except ModelUnavailable:
            return []

    def _blend(self, view: BatchView, ctx: R.RecallContext, feats: dict[str, Any], candidates: R.Fused,
               ranking: Ranking | None, degraded: bool, k: int, explain: bool, stages: dict[str, float]) -> Answer:
        catalog = view.catalog
        ids = candidates.ids
        history_sent = [m for m, _, _ in ctx.history][-self.history_len:]
        t = time.perf_counter()
        use_model = ranking is not None and (not ctx.is_cold or self.cfg.serving.rank_cold_start)
        order = blend(candidates.scores, ranking.score if use_model and ranking else None,
                      self.cfg.serving.recall_weight)
        picked = cap_genres(order, lambda i: catalog.genres(ids[i]), k, self.cfg.serving.genre_cap)
        watched: dict[int, int | None] = {}
        if explain and ranking is not None and history_sent:
            watched = {ids[i]: m for i, m in distinctive_history(ranking.attention, picked, history_sent).items()}
        reasons = reasons_for([ids[i] for i in picked], {ids[i]: candidates[i].sources for i in picked}, catalog.genres,
                              catalog.title, watched, ctx.top_genres, feats.get("age_bucket"), feats.get("gender")) \
            if explain else {}
        items = [catalog_item(catalog, ids[i],
                              float(ranking.score[i]) if use_model and ranking else float(candidates[i].score),
                              predicted_rating=float(ranking.rating[i]) if ranking else 0.0,
                              sources=list(candidates[i].sources), reason=reasons.get(ids[i], ""))
                 for i in picked]
        stages["blend"] = time.perf_counter() - t
        return Answer(items=items, model_version=ranking.model_version if ranking else "", degraded=degraded,
                      batch_version=view.store.version, stages=stages)

    def _popular_answer(self, view: BatchView, k: int, wanted: list[str], exclude: set[int] | None = None) -> Answer:
        """Redis is down: the last good popular list (per requested genre when asked), minus what is known seen."""
        self.metrics.degraded.labels("recommend", "redis").inc()
        catalog = view.catalog
        lists = [catalog.popular_by_genre.get(g, []) for g in wanted] if wanted else [catalog.popular]
        merged = R.interleave(lists, exclude or set(), max(k * 3, k))
        order = cap_genres(list(range(len(merged))), lambda i: catalog.genres(merged[i][0]), k,
                           self.cfg.serving.genre_cap)
        items = [catalog_item(catalog, merged[i][0], float(merged[i][1]), sources=["popular"],
                              reason="popular with everyone (live data unavailable)") for i in order]
        answer = Answer(items=items, degraded=True, batch_version=view.store.version)
        self._observe(answer)
        return answer

    def _observe(self, answer: Answer) -> None:
        for stage, seconds in answer.stages.items():
            self.metrics.stage.labels(stage).observe(seconds)
        self.metrics.set_batch_version(answer.batch_version)

    # --- Rank -----------------------------------------------------------------------------
    def rank(self, user_id: int, movie_ids: Sequence[int], deadline: float | None = None,
             profile: Profile | None = None) -> Answer:
        user_id = self._id("user_id", user_id)
        if not movie_ids:
            raise InvalidArgument("movie_ids must not be empty")
        if len(movie_ids) > MAX_RANK_IDS:
            raise InvalidArgument(f"at most {MAX_RANK_IDS} movie_ids per call, got {len(movie_ids)}")
        ids = [self._id("movie_id", m) for m in movie_ids]
        view, degraded = self._view_or_fallback("rank")
        unknown = view.catalog.unknown(ids)
        if unknown:
            shown = ", ".join(str(m) for m in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise InvalidArgument(f"unknown movie id(s): {shown}")
        ctx, feats = R.RecallContext(user_id=user_id), {}
        if not degraded:
            try:
                ctx, feats = view.store.user_context(user_id, history_len=self.cfg.features.history_len)
            except StoreUnavailable:
                degraded = True
                self.metrics.degraded.labels("rank", "redis").inc()
        ctx, feats = with_profile(ctx, feats, profile)
        try:
            ranking: Ranking | None = self._rank(self._user_input(user_id, ctx, feats), ids, view, deadline)
        except ModelUnavailable:
            ranking, degraded = None, True
            self.metrics.degraded.labels("rank", "model").inc()
        movies = view.catalog.movies
        # degraded: popularity orders, the Bayesian mean stands in for the rating
        items = [catalog_item(view.catalog, m, float(ranking.score[i]) if ranking else movies[m].popularity / 10.0,
                              predicted_rating=float(ranking.rating[i]) if ranking else movies[m].bayes_rating)
                 for i, m in enumerate(ids)]
        return Answer(items=items, model_version=ranking.model_version if ranking else "", degraded=degraded,
                      batch_version=view.store.version)

    # --- SimilarMovies ----------------------------------------------------------------------
    def similar(self, movie_id: int, k: int = 0) -> Answer:
        movie_id, k = self._id("movie_id", movie_id), self._k(k)
        view, degraded = self._view_or_fallback("similar")
        if movie_id not in view.catalog:
            raise NotFound(f"unknown movie id {movie_id}")
        scored: list[tuple[int, float]] = []
        if not degraded:
            try:
                scored = view.store.item_lists("similar", [movie_id]).get(movie_id, [])
            except StoreUnavailable:
                degraded = True
                self.metrics.degraded.labels("similar", "redis").inc()
        if degraded:  # same-genre popular movies from memory
            genres = view.catalog.genres(movie_id)
            scored = R.interleave([view.catalog.popular_by_genre.get(g, []) for g in genres] or [view.catalog.popular],
                                   {movie_id}, k)
        items = [catalog_item(view.catalog, m, float(s)) for m, s in scored if m != movie_id][:k]
        return Answer(items=items, degraded=degraded, batch_version=view.store.version)

    # --- RecordRating -----------------------------------------------------------------------
    def record_rating(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None,
                      idempotency_key: str | None = None) -> str:
        """Append one rating event, answer its id. A keyed retry appends nothing here, and its id, derived from
        (user, key), lets the stream job drop one that reached another gateway (serving/README.md)."""
        if self.events is None:
            raise Unavailable("this gateway has no event log configured")
        try:
            event = new_event(user_id, movie_id, rating, ts=timestamp, idempotency_key=idempotency_key)
        except EventError as exc:
            raise InvalidArgument(str(exc)) from None
        if idempotency_key is None:
            self._append(event)
            return event.event_id
        try:
            self.recent_keys.once((event.user_id, idempotency_key), (event.movie_id, event.rating, timestamp),
                                  lambda: self._append(event))
        except KeyReused as exc:
            raise InvalidArgument(f"idempotency_key {idempotency_key!r} {exc} by user {event.user_id}") from None
        except KeyInProgress as exc:
            raise Unavailable(f"idempotency_key {idempotency_key!r}: {exc}") from None
        return event.event_id

    def _append(self, event: RatingEvent) -> None:
        try:
            self.events.append(event)  # type: ignore[union-attr] - checked by record_rating
        except OSError as exc:  # the spool's disk: nothing was accepted, a retry (same key) is safe
            raise Unavailable(f"the event log cannot be written ({exc}); retry later") from None
        self.metrics.events.inc()

    # --- health ---------------------------------------------------------------------------
    def can_answer(self) -> bool:
        """Would a Recommend get an answer (degraded or not) now? False only while no batch version was ever
        readable: nothing published yet, or Redis down since start. What gRPC health reports (NOT_SERVING)."""
        try:
            self.versions.view()
            return True
        except NotPublished:
            return False
        except StoreUnavailable:
            return self.versions.last_good is not None

    def health(self) -> dict[str, Any]:
        status: dict[str, Any] = {"redis": False, "batch_version": None, "model": False, "model_version": None}
        try:
            status["batch_version"] = self.versions.view().store.version
            status["redis"] = True
        except (StoreUnavailable, NotPublished):
            pass
        try:
            status["model_version"] = self.ranking.model_status()
            status["model"] = status["model_version"] is not None
        except ModelUnavailable:
            pass
        status["model_breaker"] = getattr(getattr(self.ranking, "breaker", None), "state", "closed")
        status["events"] = self.events.health() if self.events is not None else None
        events_ok = status["events"] is None or status["events"].get("state") != "failing"
        status["status"] = "ok" if status["redis"] and status["model"] and events_ok else "degraded"
        return status

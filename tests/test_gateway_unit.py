"""The gateway's branches against the in-memory store: no Redis, Spark, TensorFlow or network.

The gateway reads through ``pipeline.store.OnlineStore``; here that is
``InMemoryStore`` over a small hand-made publish (12 movies in three genres, one known
user), so each branch runs in milliseconds: known user, cold start, seen filter, genre
filter, blend, Redis down (degraded), model down (degraded), version switch, Rank,
SimilarMovies, RecordRating and validation.

The ranking client is a fake, and the one fake here: a real model needs TensorFlow and
a trained export, which is what ``tests/test_gateway.py`` runs end to end (real Redis,
real model server, real gRPC and HTTP). ``ScriptedRanking`` scores each movie from a
fixed table, so a test knows the model's order and can tell it from the recall order.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import keys as K
from pipeline.config import Config, load_config
from pipeline.events import RatingEvent
from pipeline.store import InMemoryStore, PublishedVersion
from serving.gateway import Gateway, InvalidArgument, NotFound, Unavailable
from serving.ranking_client import ModelUnavailable, Ranking, Recommended

GENRE_OF = {m: ("Action" if m <= 4 else "Comedy" if m <= 8 else "Drama") for m in range(1, 13)}
USER = 7


class ScriptedRanking:
    """Stands in for the model server (see the module docstring): a fixed score per movie."""

    def __init__(self, scores: dict[int, float], version: str = "3") -> None:
        self.scores, self.version = scores, version
        self.down = False
        self.requests: list[dict[str, np.ndarray]] = []
        self.next: list[tuple[int, float]] = []          # what next_movies answers
        self.histories: list[list[int]] = []
        self.by_ids: list[list[int]] = []                # candidate ids sent through rank_ids
        self.one_call = False                            # does the export have ``recommend``
        self.sent_one_call: list[list[int]] = []         # candidate ids sent through recommend

    def rank(self, request: dict[str, np.ndarray], timeout_s: float | None = None) -> Ranking:
        if self.down:
            raise ModelUnavailable("scripted: model server down")
        self.requests.append(request)
        ids = [int(m) for m in request["movie_ids"][0]]
        score = np.array([self.scores.get(m, 0.0) for m in ids], dtype=np.float32)
        history = request["hist_movie_ids"].shape[1]
        return Ranking(score=score, rating=1.0 + 4.0 * score, attention=np.zeros((len(ids), history), np.float32),
                       model_version=self.version)

    def rank_ids(self, user: dict[str, np.ndarray], movie_ids: np.ndarray, batch_version: str,
                 full: Any, timeout_s: float | None = None) -> Ranking:
        """``rank_ids`` answers like ``rank`` (the real client's equality is tests/test_model_export.py's)."""
        self.by_ids.append([int(m) for m in movie_ids[0]])
        return self.rank(full(), timeout_s)

    def recommend(self, user: dict[str, np.ndarray], movie_ids: np.ndarray, batch_version: str, full: Any,
                  timeout_s: float | None = None) -> Recommended | None:
        """``recommend``: ``next_movies`` and ``rank`` of both lists in one call; None (two calls) unless
        ``one_call`` (the real signature's equality with the two is tests/test_model_export.py's)."""
        if not self.one_call:
            return None
        if self.down:
            raise ModelUnavailable("scripted: model server down")
        self.sent_one_call.append([int(m) for m in movie_ids[0]])
        self.histories.append([int(m) for m in user["hist_movie_ids"][0] if m > 0])
        nxt = list(self.next)
        on_next = {**user, "movie_ids": np.asarray([[m for m, _ in nxt]], np.int64)}
        return Recommended(next_movies=nxt, next_ranking=self.rank(on_next), ranking=self.rank(full()))

    def next_movies(self, history: list[int], history_len: int, timeout_s: float | None = None) -> list[tuple[int, float]]:
        """The ``next_movies`` signature: a scripted list, whatever the history."""
        if self.down:
            raise ModelUnavailable("scripted: model server down")
        self.histories.append(list(history))
        return list(self.next)

    def model_status(self, timeout_s: float | None = None) -> str | None:
        if self.down:
            raise ModelUnavailable("scripted: model server down")
        return self.version

    def close(self) -> None:
        pass


class ListLog:
    """An event log that keeps what it is given (``pipeline.events.EventLog``)."""

    def __init__(self) -> None:
        self.events: list[RatingEvent] = []

    def append(self, event: RatingEvent) -> None:
        self.events.append(event)

    def health(self) -> dict[str, Any]:
        return {"log": "list", "state": "ok"}

    def close(self) -> None:
        pass


def published(tag: str = "") -> PublishedVersion:
    movies = {m: {"title": f"{tag}Movie {m}", "genres": [g], "year": 1990 + m, "title_tokens": ["movie"],
                  "n_ratings": 100 - m, "mean_rating": 3.5, "bayes_rating": 3.4, "popularity": float(100 - m)}
              for m, g in GENRE_OF.items()}
    by_genre = {g: [(m, float(100 - m)) for m in sorted(GENRE_OF) if GENRE_OF[m] == g] for g in set(GENRE_OF.values())}
    lists: dict[str, list[tuple[int, float]]] = {K.list_popular(): [(m, float(100 - m)) for m in sorted(GENRE_OF)]}
    lists.update({K.list_popular(g): v for g, v in by_genre.items()})
    lists[K.list_demographic(25, "F")] = [(6, 1.0), (7, 0.9)]
    return PublishedVersion(
        users={USER: {"age_bucket": 25, "gender": "F", "occupation": "writer", "top_genres": ["Comedy"],
                      "n_ratings": 3, "mean_rating": 4.0}},
        histories={USER: [(1, 5.0, 100), (2, 4.0, 200), (5, 3.0, 300)]},
        seen={USER: {1, 2, 5}},
        user_lists={"als": {USER: [(3, 0.9), (6, 0.8), (9, 0.7)]}},
        item_lists={"next": {5: [(6, 1.0), (7, 0.5)]}, "similar": {2: [(3, 1.0), (4, 0.5)]}},
        global_lists=lists, movies=movies)


def config(tmp_path: Path, **serving: Any) -> Config:
    return load_config(home=tmp_path, environ={}, overrides={
        "serving": {"version_check_seconds": 3600.0, "genre_cap": 1.0, **serving}, "redis": {"key_prefix": "unit"}})


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore({"v1": published()}, current="v1")


@pytest.fixture
def model() -> ScriptedRanking:
    # the model prefers higher movie ids: the opposite of every recall list
    return ScriptedRanking({m: m / 100 for m in GENRE_OF})


def make_gateway(cfg: Config, store: InMemoryStore, model: ScriptedRanking, events: ListLog | None = None) -> Gateway:
    return Gateway(cfg, store, model, events)  # type: ignore[arg-type] - ScriptedRanking stands in for RankingClient


def ids(answer: Any) -> list[int]:
    return [item.movie_id for item in answer.items]


def test_known_user_ranked_by_the_model_without_seen_movies(tmp_path: Path, store: InMemoryStore,
                                                              model: ScriptedRanking) -> None:
    answer = make_gateway(config(tmp_path), store, model).recommend(USER, k=5)
    assert not answer.degraded and not answer.cold_start
    assert answer.model_version == "3" and answer.batch_version == "v1"
    got = ids(answer)
    assert len(got) == 5 and not set(got) & {1, 2, 5}
    assert got == sorted(got, reverse=True)  # the model's order (recall_weight 0)
    sent = [int(m) for m in model.requests[-1]["movie_ids"][0]]
    assert set(got) <= set(sent) and not set(sent) & {1, 2, 5}
    assert [int(m) for m in model.requests[-1]["hist_movie_ids"][0] if m] == [1, 2, 5]
    assert all(item.title == f"Movie {item.movie_id}" and item.year == 1990 + item.movie_id for item in answer.items)
    assert all(item.reason for item in answer.items)


def test_seen_movies_come_back_when_asked(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    make_gateway(config(tmp_path), store, model).recommend(USER, k=5, exclude_seen=False)
    assert {1, 2, 5} & {int(m) for m in model.requests[-1]["movie_ids"][0]}


def test_stream_history_counts_as_seen(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    store.online_histories[USER] = [(12, 5.0, 400)]
    store.online_user_feats[USER] = {"n_ratings": 1, "mean_rating": 5.0}
    answer = make_gateway(config(tmp_path), store, model).recommend(USER, k=10)
    assert 12 not in ids(answer)
    request = model.requests[-1]
    assert [int(m) for m in request["hist_movie_ids"][0] if m] == [1, 2, 5, 12]


def test_genre_filter_keeps_only_the_asked_genres(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    answer = gateway.recommend(USER, k=10, genres=["Drama"])
    assert ids(answer) and all(GENRE_OF[m] == "Drama" for m in ids(answer))
    with pytest.raises(InvalidArgument, match="unknown genre"):
        gateway.recommend(USER, genres=["Space Opera"])


def test_cold_start_keeps_the_recall_order_unless_configured(tmp_path: Path, store: InMemoryStore,
                                                               model: ScriptedRanking) -> None:
    answer = make_gateway(config(tmp_path), store, model).recommend(999, k=4)
    assert answer.cold_start and not answer.degraded
    assert ids(answer) == [1, 2, 3, 4]  # the popular list's order: the model is not asked to reorder
    reranked = make_gateway(config(tmp_path, rank_cold_start=True), store, model).recommend(999, k=4)
    assert reranked.cold_start and ids(reranked) == sorted(ids(reranked), reverse=True)


def test_blend_weight_moves_the_order_towards_recall(tmp_path: Path, store: InMemoryStore,
                                                     model: ScriptedRanking) -> None:
    by_model = ids(make_gateway(config(tmp_path, recall_weight=0.0), store, model).recommend(USER, k=6))
    candidates = [int(m) for m in model.requests[-1]["movie_ids"][0]]  # the fused recall order, best first
    by_recall = ids(make_gateway(config(tmp_path, recall_weight=100.0), store, model).recommend(USER, k=6))
    assert by_model == sorted(candidates, reverse=True)[:6]
    assert by_recall == candidates[:6] != by_model


def test_genre_cap_limits_one_genre(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    uncapped = ids(make_gateway(config(tmp_path, genre_cap=1.0), store, model).recommend(USER, k=4))
    capped = ids(make_gateway(config(tmp_path, genre_cap=0.25), store, model).recommend(USER, k=4))
    assert [GENRE_OF[m] for m in uncapped] == ["Drama"] * 4
    genres = [GENRE_OF[m] for m in capped]
    # one movie per genre while others remain; the cap never shortens the list
    assert len(capped) == 4 and len(set(genres[:3])) == 3


def test_model_down_answers_the_recall_order_degraded(tmp_path: Path, store: InMemoryStore,
                                                      model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    healthy = gateway.recommend(USER, k=5)
    model.down = True
    answer = gateway.recommend(USER, k=5)
    assert answer.degraded and answer.model_version == ""
    assert ids(answer) != ids(healthy) and not set(ids(answer)) & {1, 2, 5}
    assert [i.score for i in answer.items] == sorted((i.score for i in answer.items), reverse=True)
    assert gateway.health()["status"] == "degraded" and gateway.health()["redis"]


def test_store_down_answers_the_last_good_popular_list(tmp_path: Path, store: InMemoryStore,
                                                       model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    gateway.recommend(USER, k=3)  # the version is read once while the store is up
    store.down = True
    gateway.versions.recheck()  # the next request finds the store down while checking the version
    answer = gateway.recommend(USER, k=3)
    assert answer.degraded and answer.batch_version == "v1"
    assert ids(answer) == [1, 2, 3] and all(i.sources == ["popular"] for i in answer.items)
    comedy = gateway.recommend(USER, k=3, genres=["Comedy"])
    assert comedy.degraded and ids(comedy) == [5, 6, 7]
    similar = gateway.similar(9, k=2)
    assert similar.degraded and ids(similar) == [10, 11]
    assert not gateway.health()["redis"]


def test_nothing_readable_is_unavailable(tmp_path: Path, model: ScriptedRanking) -> None:
    empty = InMemoryStore()
    with pytest.raises(Unavailable, match="nothing published"):
        make_gateway(config(tmp_path), empty, model).recommend(USER)
    down = InMemoryStore({"v1": published()}, current="v1")
    down.down = True
    with pytest.raises(Unavailable, match="no published version was read"):
        make_gateway(config(tmp_path), down, model).recommend(USER)


def test_a_new_version_is_switched_to(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    assert gateway.recommend(USER, k=1).batch_version == "v1"
    store.versions["v2"] = published("New ")
    store.current = "v2"
    assert gateway.recommend(USER, k=1).batch_version == "v1"  # within version_check_seconds: no re-read
    gateway.versions.recheck()
    answer = gateway.recommend(USER, k=1)
    assert answer.batch_version == "v2" and answer.items[0].title.startswith("New Movie")


def test_rank_scores_the_given_movies(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    answer = gateway.rank(USER, [3, 9, 4])
    assert ids(answer) == [3, 9, 4] and [round(i.score, 2) for i in answer.items] == [0.03, 0.09, 0.04]
    model.down = True
    degraded = gateway.rank(USER, [3, 9])
    assert degraded.degraded and [i.predicted_rating for i in degraded.items] == [3.4, 3.4]
    with pytest.raises(InvalidArgument, match="unknown movie id"):
        gateway.rank(USER, [3, 404])
    with pytest.raises(InvalidArgument, match="must not be empty"):
        gateway.rank(USER, [])


def test_similar_reads_the_item_list(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path), store, model)
    assert ids(gateway.similar(2, k=5)) == [3, 4]
    with pytest.raises(NotFound):
        gateway.similar(404)


def test_record_rating_validates_and_appends(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    log = ListLog()
    gateway = make_gateway(config(tmp_path), store, model, log)
    event_id = gateway.record_rating(USER, 3, 4.5, timestamp=1000)
    assert [(e.event_id, e.user_id, e.movie_id, e.rating, e.ts) for e in log.events] == [(event_id, USER, 3, 4.5, 1000)]
    with pytest.raises(InvalidArgument):
        gateway.record_rating(USER, 3, 7.0)
    with pytest.raises(Unavailable, match="no event log"):
        make_gateway(config(tmp_path), store, model).record_rating(USER, 3, 4.0)


def test_a_keyed_retry_appends_nothing_and_another_gateway_gets_the_same_id(tmp_path: Path, store: InMemoryStore,
                                                                             model: ScriptedRanking) -> None:
    """Two gateways stand for two processes: each remembers its own keys, and the id both derive from
    (user, key) is what the stream job's de-duplication (``flink_jobs.online_state.SeenIds``) drops."""
    from flink_jobs.online_state import SeenIds

    log_a, log_b = ListLog(), ListLog()
    gw_a, gw_b = make_gateway(config(tmp_path), store, model, log_a), make_gateway(config(tmp_path), store, model, log_b)
    first = gw_a.record_rating(USER, 3, 4.5, idempotency_key="abc")
    assert gw_a.record_rating(USER, 3, 4.5, idempotency_key="abc") == first and len(log_a.events) == 1
    assert gw_b.record_rating(USER, 3, 4.5, idempotency_key="abc") == first and len(log_b.events) == 1
    seen = SeenIds()
    assert [seen.check_and_add(e.event_id, 0.0, 3600.0) for e in log_a.events + log_b.events] == [False, True]
    with pytest.raises(InvalidArgument, match="idempotency_key 'abc' was already used for a different request"):
        gw_a.record_rating(USER, 4, 4.5, idempotency_key="abc")
    with pytest.raises(InvalidArgument, match="idempotency_key must be"):
        gw_a.record_rating(USER, 3, 4.5, idempotency_key="x" * 129)
    assert len(log_a.events) == 1


def test_k_and_ids_are_validated(tmp_path: Path, store: InMemoryStore, model: ScriptedRanking) -> None:
    gateway = make_gateway(config(tmp_path, max_k=20), store, model)
    assert len(gateway.recommend(USER, k=0).items) == 9  # k=0 is the default 10; 9 unseen movies exist
    with pytest.raises(InvalidArgument, match="k must be between 1 and 20"):
        gateway.recommend(USER, k=21)
    with pytest.raises(InvalidArgument, match="user_id must be a positive integer"):
        gateway.recommend(0)


def test_the_model_channel_joins_recall_without_seen_or_unlisted_movies(tmp_path: Path, model: ScriptedRanking) -> None:
    data = published()
    data.movies[13] = {"title": "Movie 13", "genres": ["Drama"], "year": 2003, "title_tokens": ["movie"],
                       "n_ratings": 0, "in_catalog": False}          # listed, dropped by the batch filter
    store = InMemoryStore({"v1": data}, current="v1")
    model.next = [(1, -0.1), (13, -0.2), (11, -0.3)]            # 1 is seen, 13 not recommendable
    gw = make_gateway(config(tmp_path, model_recall=2), store, model)
    answer = gw.recommend(USER, k=12)
    assert model.histories[-1] == [1, 2, 5]                       # the live history goes to next_movies
    sent = [int(m) for m in model.requests[-1]["movie_ids"][0]]
    assert 1 not in sent and 13 not in sent and 13 not in ids(answer)
    by_id = {item.movie_id: item for item in answer.items}
    assert "next_model" in by_id[11].sources
    assert by_id[11].reason == "often watched right after movies you watched recently"
    ranked = gw.rank(USER, [13, 11])                               # Rank scores a listed movie all the same
    assert ids(ranked) == [13, 11] and not ranked.degraded
    model.down = True
    assert gw.recommend(USER, k=3).degraded                       # channel empty, ranking reports the outage
    with pytest.raises(InvalidArgument, match=r"unknown movie id\(s\): 99, 98$"):
        gw.rank(USER, [99, 11, 98, 99])


def test_one_model_call_answers_what_two_calls_answer(tmp_path: Path, model: ScriptedRanking) -> None:
    """With ``recommend`` in the export a Recommend makes one model call: the other channels' fused candidates
    go with it, and the answer (items, scores, sources, reasons) is the two-call path's. With a merged size
    that cuts, a movie only the model proposes still ranks (its row comes from the model's own list)."""
    data = published()
    store = InMemoryStore({"v1": data}, current="v1")
    model.next = [(12, -0.1), (1, -0.2), (11, -0.3), (3, -0.4)]   # 1 is seen
    answers = {}
    for one_call in (False, True):
        model.one_call = one_call
        for size in (400, 3):
            gw = make_gateway(config(tmp_path, model_recall=3, candidates=size), store, model)
            answers[(one_call, size)] = gw.recommend(USER, k=6)
    for size in (400, 3):
        two, one = answers[(False, size)], answers[(True, size)]
        assert [(i.movie_id, i.score, i.predicted_rating, i.sources, i.reason) for i in one.items] == \
               [(i.movie_id, i.score, i.predicted_rating, i.sources, i.reason) for i in two.items]
        assert not one.degraded and one.model_version == "3"
    assert len(model.sent_one_call) == 2 and len(model.sent_one_call[-1]) == 3  # cut at the merged size
    assert 12 not in model.sent_one_call[-1] and 12 in ids(answers[(True, 3)])  # the model's own movie ranks
    model.down = True
    assert make_gateway(config(tmp_path, model_recall=3), store, model).recommend(USER, k=3).degraded


def test_a_new_version_loads_off_the_request_path(tmp_path: Path, store: InMemoryStore,
                                                   model: ScriptedRanking) -> None:
    """Once v1 serves, v2's catalog loads on a background thread: requests keep answering from v1 while it
    loads (here: held until released), then v2 serves."""
    from serving.catalog import MovieCatalog

    loading, release = threading.Event(), threading.Event()

    def load(view: Any) -> MovieCatalog:
        if view.version == "v2":
            loading.set()
            assert release.wait(30)
        return MovieCatalog.load(view)

    gateway = Gateway(config(tmp_path, version_check_seconds=0.001), store, model, None, load_catalog=load)  # type: ignore[arg-type]
    assert gateway.recommend(USER, k=1).batch_version == "v1"
    store.versions["v2"] = published("New ")
    store.current = "v2"
    answers = []
    while not loading.is_set() or len(answers) < 3:  # the load has started and is held: v1 still answers
        answers.append(gateway.recommend(USER, k=1).batch_version)
        assert len(answers) < 100_000
    assert set(answers) == {"v1"}
    release.set()
    for _ in range(3000):
        if gateway.recommend(USER, k=1).batch_version == "v2":
            break
        threading.Event().wait(0.01)
    answer = gateway.recommend(USER, k=1)
    assert answer.batch_version == "v2" and answer.items[0].title.startswith("New Movie")


def test_a_deadline_passed_between_stages_stops_the_work(tmp_path: Path, store: InMemoryStore,
                                                         model: ScriptedRanking, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's deadline runs out while the features are read: DeadlineExceeded, and the model is never
    called (no work for an answer nobody waits for)."""
    import time

    from serving.gateway import DeadlineExceeded

    gateway = make_gateway(config(tmp_path), store, model)
    view = gateway.versions.view()
    read = view.store.user_context

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return read(*args, **kwargs)

    monkeypatch.setattr(view.store, "user_context", slow)
    with pytest.raises(DeadlineExceeded, match="features"):
        gateway.recommend(USER, k=3, deadline=time.monotonic() + 0.01)
    assert model.requests == [] and model.histories == []

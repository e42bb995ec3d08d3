"""Tests of the synthetic MovieLens generator (pipeline.synth).

The default-size test generates the full 1,000,209-rating set once and checks it
against ML-1M's published shape (docs/architecture.md, "Synthetic data calibration") by
reading the written files back with plain Python/numpy/pandas, the way any consumer
would. The signal tests prove the data carries what real MovieLens carries (order
matters for the next movie; ratings are predictable from user and movie effects), and
include a control that shows the sequence check fails on data without order.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import synth
from pipeline.config import SynthConfig
from pipeline.schemas import AGE_BUCKETS

ML1M_GENRES = {"Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
               "Western"}
ML1M_SHARES = {1: 5.6, 2: 10.8, 3: 26.1, 4: 34.9, 5: 22.6}
SMALL = dict(users=200, movies=300, ratings=10_000)
FILES = ("ratings.dat", "movies.dat", "users.dat", "README.synthetic.txt")


# ---------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Dataset:
    """The three files parsed back (0-based nothing: ids as written)."""

    ratings: pd.DataFrame            # u, m, r, t in file order
    movies: list[tuple[int, str, list[str]]]
    users: list[list[str]]
    raw: dict[str, bytes]


def read_dataset(directory: Path) -> Dataset:
    """Parse an ML-1M layout directory with plain pandas / Python (latin-1, '::')."""
    raw = {name: (directory / name).read_bytes() for name in FILES}
    ratings = pd.read_csv(io.BytesIO(raw["ratings.dat"].replace(b"::", b"\t")), sep="\t", header=None,
                          names=["u", "m", "r", "t"], dtype=np.int64)
    movies = []
    for line in raw["movies.dat"].decode("latin-1").split("\n")[:-1]:
        mid, title, genres = line.split("::")
        movies.append((int(mid), title, genres.split("|")))
    users = [line.split("::") for line in raw["users.dat"].decode("latin-1").split("\n")[:-1]]
    return Dataset(ratings=ratings, movies=movies, users=users, raw=raw)


def sequences(ratings: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, movies, start offsets) of the file, which is sorted by user then time."""
    u = ratings.u.to_numpy()
    m = ratings.m.to_numpy()
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return u, m, starts


def next_item_hit_rates(ratings: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Leave-last-one-out HR@10 of three predictors, all excluding movies the user has seen.

    * ``cooc``: movies most often rated right after the user's second-to-last movie,
      counted over the train sequences (everything but each user's last rating);
    * ``pop``: the 10 most rated movies in train;
    * ``shuffled``: ``cooc`` counted on train sequences whose order was shuffled (what
      co-rating alone gives, without order).
    """
    u, m_ids, starts = sequences(ratings)
    _, m = np.unique(m_ids, return_inverse=True)
    n_items = int(m.max()) + 1
    ends = np.r_[starts[1:], len(u)]
    train = np.ones(len(u), dtype=bool)
    train[ends - 1] = False
    rng = np.random.default_rng(seed)
    shuffled = m.copy()
    for s, e in zip(starts, ends):
        shuffled[s:e - 1] = rng.permutation(m[s:e - 1])

    def transitions(items: np.ndarray) -> np.ndarray:
        tu, tm = u[train], items[train]
        same = tu[1:] == tu[:-1]
        counts = np.zeros((n_items, n_items))
        np.add.at(counts, (tm[:-1][same], tm[1:][same]), 1.0)
        return counts

    cooc, cooc_shuffled = transitions(m), transitions(shuffled)
    pop = np.bincount(m[train], minlength=n_items).astype(np.float64)
    hits = Counter()
    for s, e in zip(starts, ends):
        seen, target = m[s:e - 1], m[e - 1]
        for name, scores in (("cooc", cooc[m[e - 2]]), ("pop", pop), ("shuffled", cooc_shuffled[shuffled[e - 2]])):
            score = scores + 1e-6 * pop  # ties broken by popularity
            score[seen] = -np.inf
            hits[name] += int(target in np.argpartition(-score, 10)[:10])
    return {name: hits[name] / len(starts) for name in ("cooc", "pop", "shuffled")}


# ---------------------------------------------------------------------------- default size


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.SynthSummary, Dataset]:
    out = tmp_path_factory.mktemp("synth") / "ml-1m-synthetic"
    summary = synth.generate(SynthConfig(), out)
    return summary, read_dataset(out)


def test_default_counts_match_ml1m(default_set):
    summary, data = default_set
    r = data.ratings
    assert len(r) == 1_000_209
    assert len(data.users) == 6040 and len(data.movies) == 3883
    per_user = r.groupby("u").size()
    assert len(per_user) == 6040 and per_user.min() >= 20
    assert 85 <= per_user.median() <= 110
    assert per_user.max() > 2000
    assert 3650 <= r.m.nunique() <= 3760
    assert set(r.m) <= {mid for mid, _, _ in data.movies}
    assert set(r.u) == {int(u[0]) for u in data.users}
    assert not r.duplicated(["u", "m"]).any(), "a user rates a movie at most once"


#: Full HR@10 under P1 of the behaviour baselines on the real development sets, measured with the same function
#: the test applies (``python -m bench.synth_calibration DIR`` on the real ML-100K and ml-latest-small files).
REAL_PROFILES = {
    "ml-100k": {"popularity": 0.0838, "item-knn": 0.1103, "transition": 0.1453, "ease": 0.1506},
    "ml-latest-small": {"popularity": 0.0393, "item-knn": 0.0672, "transition": 0.0869, "ease": 0.0852},
}


def test_default_behaviour_matches_real_movielens(default_set):
    """Issue #10's calibration: on the default set, each baseline's HR@10 ratio to popularity (transition, EASE,
    item-kNN) is within 20 % of that ratio on both real development sets, so synthetic runs rank models the
    way real data does (a generator whose order signal dominates made a weak ranker look excellent)."""
    from model.baselines import behaviour_profile

    _, data = default_set
    ratings = data.ratings.rename(columns={"u": "user_id", "m": "movie_id", "r": "rating", "t": "ts"})
    hr = behaviour_profile(ratings)
    print("synthetic default HR@10", hr)
    for name, real in REAL_PROFILES.items():
        for baseline in ("item-knn", "transition", "ease"):
            ratio, real_ratio = hr[baseline] / hr["popularity"], real[baseline] / real["popularity"]
            assert abs(ratio / real_ratio - 1) <= 0.2, (name, baseline, round(ratio, 2), round(real_ratio, 2))


def test_default_histogram_and_mean(default_set):
    _, data = default_set
    shares = data.ratings.r.value_counts(normalize=True).sort_index() * 100
    assert list(shares.index) == [1, 2, 3, 4, 5]
    for rating, target in ML1M_SHARES.items():
        assert abs(shares[rating] - target) <= 1.0, (rating, shares[rating])
    assert abs(data.ratings.r.mean() - 3.58) <= 0.03


def test_default_popularity_is_skewed(default_set):
    _, data = default_set
    per_movie = data.ratings.groupby("m").size()
    assert per_movie.max() > 3400
    assert (per_movie < 10).sum() >= 200
    top = per_movie.sort_values(ascending=False)
    assert top.iloc[: len(top) // 10].sum() > 0.35 * len(data.ratings)  # top 10% of movies hold >35%


def test_default_movies(default_set):
    _, data = default_set
    ids = [mid for mid, _, _ in data.movies]
    assert len(set(ids)) == len(ids) == 3883 and ids == sorted(ids)
    genres = Counter(g for _, _, gs in data.movies for g in gs)
    assert set(genres) == ML1M_GENRES
    per_movie = np.array([len(gs) for _, _, gs in data.movies])
    assert per_movie.min() >= 1 and per_movie.max() <= 6
    assert (per_movie <= 3).mean() > 0.9
    assert all(len(set(gs)) == len(gs) for _, _, gs in data.movies)
    pattern = re.compile(r"^(.+) \((\d{4})\)$")
    matches = [pattern.match(title) for _, title, _ in data.movies]
    assert all(matches)
    years = np.array([int(mt.group(2)) for mt in matches])
    assert years.min() >= 1919 and years.max() <= 2000
    assert 1992 <= np.median(years) <= 1996
    names = [mt.group(1) for mt in matches]
    assert not any(n.startswith(("The ", "A ", "An ")) for n in names)
    assert sum(n.endswith(", The") for n in names) > 100  # ML-style trailing articles
    assert sum(bool(re.search(r" \d$", n)) or bool(re.search(r" \d, (The|An?)$", n)) for n in names) > 40  # sequels
    assert len(set(title for _, title, _ in data.movies)) > 0.98 * len(data.movies)


def test_default_titles_carry_genre_signal(default_set):
    """A title-text model has something to learn: some words mark a genre."""
    _, data = default_set
    for genre in ("Horror", "Sci-Fi", "Romance", "Western"):
        has = [genre in gs for _, _, gs in data.movies]
        words_in, words_out = Counter(), Counter()
        for (_, title, _), inside in zip(data.movies, has):
            (words_in if inside else words_out).update(set(re.findall(r"[^\W\d_]+", title)))
        n_in, n_out = sum(has), len(has) - sum(has)
        lift = max((words_in[w] / n_in) / ((words_out[w] + 1) / n_out) for w in words_in if words_in[w] >= 5)
        assert lift > 5, genre


def test_default_users(default_set):
    _, data = default_set
    genders = Counter(u[1] for u in data.users)
    assert set(genders) == {"M", "F"} and 0.68 <= genders["M"] / len(data.users) <= 0.76
    assert {int(u[2]) for u in data.users} == set(AGE_BUCKETS)
    assert {int(u[3]) for u in data.users} == set(range(21))
    assert all(re.fullmatch(r"\d{5}(-\d{4})?", u[4]) for u in data.users)
    assert [int(u[0]) for u in data.users] == list(range(1, 6041))


def test_default_demographics_shift_genres(default_set):
    """Gender and age shift what people rate, as on ML-1M (demographic recall has signal)."""
    _, data = default_set
    users = pd.DataFrame([(int(u[0]), u[1], int(u[2])) for u in data.users], columns=["u", "gender", "age"])
    genre_of = {mid: set(gs) for mid, _, gs in data.movies}
    r = data.ratings.merge(users, on="u")

    def share(mask: pd.Series, genre: str) -> float:
        return float(r.m[mask].map(lambda mid: genre in genre_of[mid]).mean())

    assert share(r.gender == "F", "Romance") > 1.2 * share(r.gender == "M", "Romance")
    assert share(r.gender == "M", "Action") > 1.1 * share(r.gender == "F", "Action")
    assert share(r.age == 1, "Children's") > 1.3 * share(r.age == 56, "Children's")
    assert share(r.age == 56, "Film-Noir") > 1.3 * share(r.age == 18, "Film-Noir")


def test_default_sessions_and_time(default_set):
    summary, data = default_set
    r = data.ratings
    cfg = SynthConfig()
    start = pd.Timestamp(cfg.start_date, tz="UTC").timestamp()
    end = pd.Timestamp(cfg.end_date, tz="UTC").timestamp() + 86_400
    assert r.t.min() >= start and r.t.max() < end
    u, t = r.u.to_numpy(), r.t.to_numpy()
    assert (np.diff(u) >= 0).all(), "sorted by user"
    gaps = np.diff(t)[np.diff(u) == 0]
    assert (gaps >= 0).all(), "sorted by time within a user"
    assert np.median(gaps) < 600, "most ratings of a session are minutes apart"
    assert 0.003 < (gaps > 86_400).mean() < 0.1, "sessions are days or weeks apart"
    in_2000 = (pd.to_datetime(r.t, unit="s").dt.year == 2000).mean()
    assert in_2000 > 0.75, "most activity early, as on ML-1M"


def test_default_summary(default_set):
    summary, data = default_set
    per_user = data.ratings.groupby("u").size()
    hist = data.ratings.r.value_counts().sort_index()
    d = summary.as_dict()
    assert d["n_ratings"] == len(data.ratings) and d["n_users"] == 6040 and d["n_movies_listed"] == 3883
    assert d["n_movies_rated"] == data.ratings.m.nunique()
    assert d["rating_histogram"] == {str(k): int(v) for k, v in hist.items()}
    assert d["median_ratings_per_user"] == per_user.median() and d["max_ratings_per_user"] == per_user.max()
    assert d["max_ratings_per_movie"] == data.ratings.groupby("m").size().max()
    assert abs(d["mean_rating"] - data.ratings.r.mean()) < 1e-9
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.n_ratings = 0  # type: ignore[misc]
    assert "wall_seconds" in d  # reported for the README; how fast it is belongs in bench/, not here
    readme = data.raw["README.synthetic.txt"].decode("latin-1")
    assert "seed = 42" in readme and "sequence_strength" in readme
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        assert b"\r" not in data.raw[name] and data.raw[name].endswith(b"\n")


# ---------------------------------------------------------------------------- small sizes


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    first = synth.generate(SynthConfig(**SMALL, seed=5), tmp_path / "a")
    synth.generate(SynthConfig(**SMALL, seed=5), tmp_path / "b")
    synth.generate(SynthConfig(**SMALL, seed=6), tmp_path / "c")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "ratings.dat").read_bytes() != (tmp_path / "c" / "ratings.dat").read_bytes()
    assert (tmp_path / "a" / "movies.dat").read_bytes() != (tmp_path / "c" / "movies.dat").read_bytes()
    assert first.n_ratings == 10_000


@pytest.mark.parametrize("knobs", [
    SMALL,
    dict(users=50, movies=40, ratings=1_000, min_user_ratings=5),
    dict(users=30, movies=25, ratings=30 * 24, min_user_ratings=5),   # every user rates every rated movie
    dict(users=1, movies=21, ratings=20),
    dict(users=100, movies=500, ratings=2_000, sequence_strength=0.0, taste_strength=0.0,
         popularity_exponent=0.0, sessions_per_user=1.0),
])
def test_small_sizes(tmp_path: Path, knobs: dict):
    cfg = SynthConfig(**knobs)
    summary = synth.generate(cfg, tmp_path / "out")
    data = read_dataset(tmp_path / "out")
    r = data.ratings
    assert len(r) == cfg.ratings == summary.n_ratings
    assert r.groupby("u").size().min() >= cfg.min_user_ratings and r.u.nunique() == cfg.users
    assert not r.duplicated(["u", "m"]).any()
    assert set(r.m) <= {mid for mid, _, _ in data.movies} and len(data.movies) == cfg.movies
    assert r.r.between(1, 5).all()
    rated = cfg.movies - round(cfg.unrated_fraction * cfg.movies)
    assert r.m.nunique() <= rated


@pytest.mark.parametrize("knobs, knob", [
    (dict(users=200, movies=300, ratings=3_999), "ratings"),             # < users * min_user_ratings
    (dict(users=10, movies=100, ratings=10 * 96), "ratings"),            # > users * 95 rated movies
    (dict(users=0), "users"),
    (dict(movies=0), "movies"),
    (dict(ratings=-5), "ratings"),
    (dict(users=10, movies=10, ratings=200), "min_user_ratings"),        # 10 movies < 20 per user
    (dict(unrated_fraction=1.0), "unrated_fraction"),
    (dict(sequence_strength=-1.0), "sequence_strength"),
    (dict(popularity_exponent=float("nan")), "popularity_exponent"),
    (dict(latent_dim=0), "latent_dim"),
    (dict(session_gap_minutes=0.0), "session_gap_minutes"),
    (dict(sessions_per_user=0.5), "sessions_per_user"),
    (dict(start_date="April 2000"), "start_date"),
    (dict(start_date="2003-01-01", end_date="2000-01-01"), "end_date"),
    (dict(seed=-1), "seed"),
])
def test_bad_knobs_raise_naming_the_knob(tmp_path: Path, knobs: dict, knob: str):
    with pytest.raises(ValueError, match=knob):
        synth.generate(SynthConfig(**{**SMALL, **knobs}), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- atomic write


def test_existing_directory_refused_unless_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        synth.generate(SynthConfig(**SMALL), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    synth.generate(SynthConfig(**SMALL), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary siblings left"
    empty = tmp_path / "empty"
    empty.mkdir()
    synth.generate(SynthConfig(**SMALL), empty)  # an empty directory is fine
    assert (empty / "ratings.dat").is_file()


def test_failure_leaves_no_half_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_write = synth._write_files

    def write_then_fail(directory: Path, cfg: SynthConfig, data) -> None:
        real_write(directory, cfg, data)
        raise OSError("disk full")

    monkeypatch.setattr(synth, "_write_files", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        synth.generate(SynthConfig(**SMALL), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "ratings.dat").write_text("previous")
    with pytest.raises(OSError, match="disk full"):
        synth.generate(SynthConfig(**SMALL), old, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (old / "ratings.dat").read_text() == "previous", "the old dataset survives a failed overwrite"


def test_progress_reports_stages_in_order(tmp_path: Path):
    calls: list[tuple[str, float]] = []
    synth.generate(SynthConfig(**SMALL), tmp_path / "out", progress=lambda stage, f: calls.append((stage, f)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"choices", "ratings", "write"} <= {stage for stage, _ in calls}


# ---------------------------------------------------------------------------- signal

SIGNAL = dict(users=1000, movies=1200, ratings=100_000)


@pytest.fixture(scope="module")
def signal_set(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("signal") / "data"
    synth.generate(SynthConfig(**SIGNAL), out)
    return read_dataset(out).ratings


def test_next_movie_depends_on_the_previous_one(signal_set: pd.DataFrame):
    hr = next_item_hit_rates(signal_set)
    print("HR@10", hr)
    assert hr["cooc"] >= 1.25 * hr["pop"], hr  # real ML-100K: 1.73 (at this small size the generator gives ~1.4)
    assert hr["cooc"] >= 1.5 * hr["shuffled"], hr  # it is the order, not only co-rating


def test_sequence_check_fails_without_order(tmp_path: Path):
    """Control: with sequence_strength=0 (random order) the same check must not pass."""
    synth.generate(SynthConfig(**SIGNAL, sequence_strength=0.0), tmp_path / "random")
    hr = next_item_hit_rates(read_dataset(tmp_path / "random").ratings)
    print("HR@10 without order", hr)
    assert hr["cooc"] < 1.5 * hr["shuffled"], hr


def test_ratings_are_predictable(signal_set: pd.DataFrame):
    """User + movie effects beat the global mean on each user's held-out last rating."""
    r = signal_set
    u, m_ids, starts = sequences(r)
    _, m = np.unique(m_ids, return_inverse=True)
    _, uu = np.unique(u, return_inverse=True)
    y = r.r.to_numpy(dtype=np.float64)
    test = np.zeros(len(r), dtype=bool)
    test[np.r_[starts[1:], len(r)] - 1] = True
    train = ~test
    mean = y[train].mean()
    shrink = 5.0  # damped means: a movie with few ratings stays near the global mean

    def effect(index: np.ndarray, resid: np.ndarray) -> np.ndarray:
        total = np.bincount(index[train], resid[train], minlength=index.max() + 1)
        count = np.bincount(index[train], minlength=index.max() + 1)
        return total / (count + shrink)

    movie_effect = effect(m, y - mean)
    user_effect = effect(uu, y - mean - movie_effect[m])
    pred = np.clip(mean + user_effect[uu] + movie_effect[m], 1, 5)
    rmse_global = float(np.sqrt(np.mean((y[test] - mean) ** 2)))
    rmse_bias = float(np.sqrt(np.mean((y[test] - pred[test]) ** 2)))
    print("RMSE global", rmse_global, "user+movie", rmse_bias)
    assert rmse_bias < 0.92 * rmse_global, (rmse_bias, rmse_global)

"""Seeded synthetic MovieLens generator (ML-1M layout) with realistic structure.

Why it exists: the whole stack (Spark batch plane, recall, the ranking model, the
evaluation protocols) must run and be tuned without a downloaded dataset. A uniform
random generator would be useless for that: models tuned on it learn nothing that
transfers. So this generator reproduces the published *shape* of MovieLens-1M at its
default size (docs/architecture.md, "Synthetic data calibration") and plants the kinds of
signal real MovieLens carries:

* power-law movie popularity (a few movies rated by more than half the users, a long
  tail with fewer than 10 ratings);
* latent user tastes with genre effects and demographic effects (gender and age shift
  genre preferences), so collaborative filtering and demographic recall have signal;
* ratings = user bias + movie quality + taste match + noise, mapped by quantiles onto
  ML-1M's exact rating histogram, so rating prediction has signal;
* sequences: every movie sits on a "taste circle" (its angle correlates with its
  genres); a user's taste covers an arc of that circle that drifts over their
  sequence, and they rate movies roughly in arc order, in sessions minutes apart that
  are days or weeks apart. What a user rates next therefore depends on what they rated
  just before, as on real MovieLens (where SASRec-style models win);
* titles from genre-correlated word lists (some sequels), release years skewed to the
  1990s, ML-1M's demographic code distributions.

Beyond the marginals, the default knobs are calibrated on behaviour: the strong simple
baselines (popularity, item-kNN, transition, EASE) stand to each other as on the real
development sets (``model.baselines.behaviour_profile``; docs/architecture.md).

Everything is vectorised with numpy (no Python loop over ratings): the default
1,000,209 ratings take a few seconds. The same seed writes byte-identical files.

Example::

    from pathlib import Path
    from pipeline.config import SynthConfig
    from pipeline.synth import generate

    summary = generate(SynthConfig(users=200, movies=300, ratings=10_000), Path("var/synth"))
    summary.as_dict()["n_ratings"]  # 10000
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from pipeline.config import SynthConfig
from pipeline.schemas import AGE_BUCKETS, GENRES, OCCUPATIONS

Progress = Callable[[str, float], None]

# --------------------------------------------------------------------------------------
# Internal constants. The knobs a user may want to change live in SynthConfig; these are
# the calibration of the shape (mostly ML-1M's published marginals) and of the model.
# --------------------------------------------------------------------------------------

#: The 18 ML-1M genres (schemas.GENRES without IMAX) and their movies.dat spelling.
SYNTH_GENRES: tuple[str, ...] = GENRES[:18]
_ML1M_GENRE_SPELLING: dict[str, str] = {"Children": "Children's"}

#: ML-1M movies per genre (of 3,883): the base rate of each genre.
_GENRE_FREQ: dict[str, int] = {
    "Action": 503, "Adventure": 283, "Animation": 105, "Children": 251, "Comedy": 1200, "Crime": 211,
    "Documentary": 127, "Drama": 1603, "Fantasy": 68, "Film-Noir": 44, "Horror": 343, "Musical": 114,
    "Mystery": 106, "Romance": 471, "Sci-Fi": 276, "Thriller": 492, "War": 143, "Western": 68,
}
#: Genres in taste-circle order: neighbours are genres that co-occur and share audiences.
_GENRE_CIRCLE: tuple[str, ...] = (
    "Children", "Animation", "Musical", "Fantasy", "Adventure", "Action", "Sci-Fi", "War", "Western",
    "Crime", "Film-Noir", "Mystery", "Thriller", "Horror", "Documentary", "Drama", "Romance", "Comedy",
)
#: How strongly a movie's genres follow its angle (von Mises concentration).
_GENRE_ANGLE_KAPPA = 2.5
#: Rounds of adjusting genre base rates so the drawn mix matches ML-1M's despite the angle preference.
_GENRE_CALIBRATION_ROUNDS = 8
#: ML-1M movies with 1..6 genres (of 3,883).
_GENRES_PER_MOVIE = np.array([2025, 1322, 421, 100, 14, 1], dtype=np.float64)

#: Release years: ML-1M movies released 2000, 1999, ..., 1990 (the bulk), then an exponential tail.
_RECENT_YEAR_WEIGHTS = np.array([156, 283, 337, 315, 345, 342, 257, 165, 102, 80, 70], dtype=np.float64)
_RECENT_YEAR_SHARE = 0.65
_OLD_YEAR_SCALE = 15.0
#: Genres of an era: (share of their movies moved into it, first year, last year).
_GENRE_ERAS: dict[str, tuple[float, int, int]] = {"Film-Noir": (1.0, 1940, 1958), "Western": (0.5, 1935, 1975)}

#: ML-1M user marginals: age bucket counts, occupation counts (codes 0..20), share male.
_AGE_COUNTS: dict[int, int] = {1: 222, 18: 1103, 25: 2096, 35: 1193, 45: 550, 50: 496, 56: 380}
_OCCUPATION_COUNTS = np.array([711, 528, 267, 173, 759, 112, 236, 679, 17, 92, 195, 129, 388, 142, 302, 144,
                               241, 502, 70, 72, 281], dtype=np.float64)
_MALE_SHARE = 4331 / 6040
#: Occupation odds multipliers by age bucket (K-12 students are young, retirees old, ...).
_OCC_AGE_ODDS: dict[int, dict[int, float]] = {
    10: {1: 12.0, 18: 0.3, 25: 0.02, 35: 0.02, 45: 0.02, 50: 0.02, 56: 0.02},   # K-12 student
    4: {1: 0.5, 18: 3.5, 25: 1.0, 35: 0.2, 45: 0.1, 50: 0.1, 56: 0.1},          # college/grad student
    13: {1: 0.0, 18: 0.0, 25: 0.01, 35: 0.05, 45: 0.5, 50: 2.0, 56: 10.0},      # retired
}
#: Demographic shifts of genre preference (logit units, before taste_strength).
_GENDER_GENRE_SHIFT: dict[str, dict[str, float]] = {
    "F": {"Romance": 0.6, "Drama": 0.3, "Musical": 0.5, "Children": 0.3, "Comedy": 0.2, "Action": -0.4,
          "War": -0.4, "Western": -0.4, "Sci-Fi": -0.3, "Horror": -0.3, "Crime": -0.2},
    "M": {"Action": 0.3, "Sci-Fi": 0.3, "War": 0.25, "Western": 0.2, "Thriller": 0.15, "Horror": 0.1,
          "Romance": -0.3, "Musical": -0.3},
}
_AGE_GENRE_SHIFT: dict[int, dict[str, float]] = {
    1: {"Children": 0.8, "Animation": 0.8, "Comedy": 0.3, "Fantasy": 0.3, "Documentary": -0.5, "Film-Noir": -0.6,
        "War": -0.4},
    18: {"Horror": 0.3, "Comedy": 0.3, "Sci-Fi": 0.2, "Action": 0.2, "Animation": 0.2, "Film-Noir": -0.4},
    25: {"Action": 0.1, "Thriller": 0.1, "Sci-Fi": 0.1},
    35: {"Drama": 0.1, "Children": 0.2},
    45: {"Drama": 0.3, "War": 0.2, "Mystery": 0.2, "Horror": -0.3},
    50: {"Drama": 0.3, "War": 0.3, "Western": 0.3, "Film-Noir": 0.3, "Musical": 0.2, "Horror": -0.4},
    56: {"Drama": 0.4, "War": 0.4, "Western": 0.5, "Film-Noir": 0.5, "Musical": 0.4, "Documentary": 0.3,
         "Horror": -0.6, "Animation": -0.4},
}
_OCC_GENRE_SD = 0.15   # per-occupation random genre shift
_USER_GENRE_SD = 0.5   # individual genre preference spread

#: Latent taste vectors: a genre part (shared genre embeddings) plus an individual part.
_MOVIE_GENRE_TASTE = 0.8
_MOVIE_OWN_TASTE = 0.7
_USER_GENRE_TASTE = 1.0
_USER_OWN_TASTE = 0.8

#: Ratings per user: min + soft-capped lognormal excess (median ~96, max ~2,300 at ML-1M size).
_USER_COUNT_SIGMA = 1.25
_USER_SOFTCAP_SHARE = 0.9   # soft cap of the excess, as a share of the rated movies

#: Movie popularity by relative rank r in [0, 1): a power law (r + offset) ** -alpha for the
#: head times (1 - r + tail_eps) ** tail for the steep end of the long tail (ML-1M: 290 rated
#: movies have fewer than 5 ratings).
_POP_ALPHA = 0.8
_POP_OFFSET = 0.002
_POP_TAIL = 1.5
_POP_TAIL_EPS = 0.008
_POP_RECENCY = 0.25   # recent movies rank a little higher (per decade, in sd units of the rank key)

#: Taste terms in the choice logit (multiplied by cfg.taste_strength).
_LATENT_CHOICE_SCALE = 0.35
_GENRE_CHOICE_SCALE = 0.5
_ARC_CHOICE_WEIGHT = 0.6   # logit penalty per radian outside the user's arc
_ARC_MIN = 1.2             # narrowest arc (radians)
_ARC_BASE = 1.6            # typical arc (radians) before the per-user activity share widens it
_ARC_SHARE_WIDEN = 8.0     # arc += this * (user's movies / rated movies) * 2*pi, capped at 2*pi
_ARC_CENTER_SD = 0.7       # noise of the arc's centre around the user's genre direction
_CENTRE_PREF_WEIGHT = 2.0  # how sharply the centre follows the user's top genres
_ARC_SPREAD = 0.3          # log-normal spread of arc lengths between users
_FORWARD_SHARE = 0.8       # users who travel the circle counter-clockwise (the rest clockwise)
_ORDER_NOISE = 1.2         # position noise (radians) at sequence_strength=1; divided by the knob
_ARC_MARGIN = 0.4          # movies this far outside the arc still take an arc position
_DONOR_MIN_RATINGS = 3     # a movie gives a rating to a never-chosen one only if it keeps >= 2

#: Rating score components (standard deviations, in latent units).
_USER_BIAS_SD = 0.45
_MOVIE_QUALITY_SD = 0.5
_QUALITY_POPULARITY = 0.25   # popular movies are rated higher (as on ML-1M)
_RATING_TASTE_SD = 0.5
_RATING_GENRE = 0.3
_RATING_ARC = 0.15
_RATING_NOISE_SD = 0.75
_AGE_RATING_SHIFT: dict[int, float] = {1: 0.0, 18: -0.05, 25: 0.0, 35: 0.07, 45: 0.09, 50: 0.15, 56: 0.2}
_GENRE_RATING_SHIFT: dict[str, float] = {
    "Film-Noir": 0.5, "Documentary": 0.4, "War": 0.35, "Drama": 0.2, "Animation": 0.1, "Mystery": 0.1,
    "Horror": -0.35, "Children": -0.2, "Fantasy": -0.1, "Action": -0.05,
}
#: ML-1M's exact rating histogram (ratings 1..5).
_RATING_COUNTS = np.array([56174, 107557, 261197, 348971, 226310], dtype=np.float64)

#: Time: share of users who start in the first part of the span (ML-1M: most in 2000).
_EARLY_USER_SHARE = 0.9
_EARLY_SPAN_SHARE = 0.24
_SESSION_CUT_SKEW = 0.5        # cut positions ~ u**skew: <1 makes the first session the largest
_SESSION_GAP_MEDIAN_DAYS = 5.0  # between sessions: lognormal
_SESSION_GAP_SIGMA = 1.3

#: Movie ids leave a few gaps like ML-1M (3,883 movies listed over ids 1..3,952).
_MOVIE_ID_GAP_SHARE = 69 / 3883
_SEQUEL_SHARE = 0.04
_TITLE_GENRE_WORD_SHARE = 0.75
_ZIP_PLUS4_SHARE = 0.01

_GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "Action": ("Fury", "Strike", "Force", "Target", "Bullet", "Vengeance", "Chase", "Impact", "Thunder", "Fire",
               "Steel", "Fist", "Payback", "Rampage", "Blast"),
    "Adventure": ("Quest", "Island", "Treasure", "Journey", "River", "Jungle", "Mountain", "Expedition", "Voyage",
                  "Temple", "Pirates", "Map", "Horizon"),
    "Animation": ("Toon", "Magic", "Tale", "Kitty", "Bunny", "Dragon", "Wonder", "Puppet", "Bear", "Mouse",
                  "Balloon", "Pixie"),
    "Children": ("Kids", "Puppy", "Pony", "Family", "Friends", "Christmas", "Elf", "Doggy", "School", "Camp",
                 "Zoo", "Beethoven"),
    "Comedy": ("Crazy", "Wedding", "Party", "Dumb", "Trouble", "Funny", "Nutty", "Weekend", "Wacky", "Roommates",
               "Vacation", "Dad", "Mess", "Blues"),
    "Crime": ("Heist", "Gang", "Money", "Mob", "Street", "Killers", "Cop", "Jail", "Boss", "Score", "Deal",
              "Witness", "Godfather"),
    "Documentary": ("Story", "Life", "Voices", "World", "Portrait", "Inside", "Hoop", "Making", "America",
                    "Dreams", "Brothers", "Earth"),
    "Drama": ("Heart", "Father", "Daughter", "Winter", "Memory", "Promise", "Season", "Letters", "Shadow",
              "Truth", "Café", "Mother", "Son", "Grace", "Road"),
    "Fantasy": ("Wizard", "Spell", "Sword", "Dream", "Unicorn", "Enchanted", "Crystal", "Ring", "Legend",
                "Sorcerer", "Genie"),
    "Film-Noir": ("Dark", "Double", "Lady", "Stranger", "Sleep", "Mask", "Dame", "Falcon", "Asphalt", "Rain"),
    "Horror": ("Blood", "Dead", "Curse", "Scream", "Evil", "Haunting", "Grave", "Terror", "Zombie", "Hell",
               "Nightmare", "Vampire", "Creature"),
    "Musical": ("Song", "Dance", "Melody", "Broadway", "Singing", "Rhythm", "Swing", "Music", "Ballroom", "Tune",
                "Showboat"),
    "Mystery": ("Secret", "Clue", "Vanishing", "Mirror", "Puzzle", "Riddle", "Hidden", "Key", "Affair",
                "Detective", "Suspect"),
    "Romance": ("Love", "Kiss", "Sweet", "Forever", "Bride", "Paris", "Moon", "Passion", "Señorita", "Valentine",
                "Sabrina"),
    "Sci-Fi": ("Star", "Planet", "Galaxy", "Robot", "Alien", "Future", "Space", "Android", "Cyber", "Orbit",
               "Machine", "Invasion", "Trek"),
    "Thriller": ("Fear", "Edge", "Panic", "Silence", "Trap", "Pursuit", "Danger", "Conspiracy", "Obsession",
                 "Blind", "Stalker"),
    "War": ("Battle", "Soldier", "Glory", "Platoon", "Front", "Victory", "Sergeant", "Enemy", "Bridge", "Command",
            "Submarine"),
    "Western": ("Gun", "Outlaw", "Sheriff", "Ride", "Canyon", "Rio", "Frontier", "Saddle", "Ranch", "Dollars",
                "Niño", "Tombstone"),
}
_GENERIC_WORDS: tuple[str, ...] = (
    "Man", "Woman", "City", "Night", "Day", "Last", "First", "American", "Time", "House", "Girl", "Boy", "King",
    "Summer", "Game", "Blue", "Red", "Black", "White", "Good", "Bad", "Lucky", "Little", "Great", "New", "Old",
    "Lost", "Wild", "Big", "Long", "Golden", "Midnight", "Perfect", "Hard", "Silent", "Final", "Second", "Road",
)
_NAMES: tuple[str, ...] = ("Jack", "Billy", "Mary", "Annie", "Max", "Harry", "Lucy", "Frank", "Charlie", "Sam",
                           "Rosa", "Joe", "Nell", "Otto", "Ruby", "Vincent", "Zoe", "Amélie", "Hank", "Edna")
_ARTICLES: tuple[str, ...] = ("The", "A", "An")
_CLASH_SUFFIXES: tuple[str, ...] = ("", " II", " III", " IV", " V", " VI", " VII", " VIII", " IX", " X")


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote, with the statistics it was calibrated on (see docs/architecture.md)."""

    out_dir: str
    seed: int
    n_users: int
    n_movies_listed: int
    n_movies_rated: int
    n_ratings: int
    rating_histogram: tuple[int, int, int, int, int]
    mean_rating: float
    median_ratings_per_user: float
    max_ratings_per_user: int
    max_ratings_per_movie: int
    wall_seconds: float

    def as_dict(self) -> dict:
        """Plain JSON-serialisable dict (histogram keyed by rating as a string)."""
        out = dataclasses.asdict(self)
        out["rating_histogram"] = {str(r + 1): int(c) for r, c in enumerate(self.rating_histogram)}
        return out


def generate(cfg: SynthConfig, out_dir: Path, progress: Progress | None = None, *,
             overwrite: bool = False) -> SynthSummary:
    """Write a synthetic ML-1M layout directory (ratings.dat, movies.dat, users.dat).

    The directory appears atomically: files are written into a temporary sibling that
    is renamed onto ``out_dir`` only when complete, so a reader never sees half a
    dataset and a failure leaves nothing behind. An existing non-empty ``out_dir`` is
    refused unless ``overwrite`` is true (then it is replaced).

    ``progress(stage, fraction)`` is called as each stage starts (fraction of the work
    done so far, 0..1, ending with ("done", 1.0)).
    Raises ``ValueError`` naming the knob when the configuration is impossible.
    """
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    out_dir = Path(out_dir)
    plan = _validate(cfg)
    _check_target(out_dir, overwrite)

    data = _simulate(cfg, plan, report)

    report("write", 0.9)
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        _write_files(tmp, cfg, data)
        _check_target(out_dir, overwrite)  # re-check: someone may have created it meanwhile
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report("done", 1.0)

    per_user = np.bincount(data.user_idx, minlength=cfg.users)
    per_movie = np.bincount(data.movie_idx, minlength=cfg.movies)
    hist = np.bincount(data.rating, minlength=6)[1:6]
    return SynthSummary(
        out_dir=str(out_dir), seed=cfg.seed, n_users=cfg.users, n_movies_listed=cfg.movies,
        n_movies_rated=int((per_movie > 0).sum()), n_ratings=int(len(data.rating)),
        rating_histogram=tuple(int(c) for c in hist),  # type: ignore[arg-type]
        mean_rating=float(data.rating.mean()), median_ratings_per_user=float(np.median(per_user)),
        max_ratings_per_user=int(per_user.max()), max_ratings_per_movie=int(per_movie.max()),
        wall_seconds=round(time.perf_counter() - started, 3),
    )


# --------------------------------------------------------------------------------------
# Validation and the atomic write
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Derived sizes and dates, computed once by `_validate`."""

    n_rated: int
    start_ts: int
    end_ts: int


def _parse_date(value: str, knob: str) -> int:
    try:
        day = _dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"synth.{knob}: {value!r} is not an ISO date (YYYY-MM-DD)") from None
    return int(_dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp())


def _validate(cfg: SynthConfig) -> _Plan:
    """Reject impossible knobs with a message naming the knob (before any work)."""
    for knob in ("users", "movies", "ratings", "min_user_ratings", "latent_dim"):
        value = getattr(cfg, knob)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"synth.{knob} must be a positive integer, got {value!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, (int, np.integer)) or cfg.seed < 0:
        raise ValueError(f"synth.seed must be a non-negative integer, got {cfg.seed!r}")
    if not 0.0 <= cfg.unrated_fraction < 1.0:
        raise ValueError(f"synth.unrated_fraction must be in [0, 1), got {cfg.unrated_fraction!r}")
    for knob in ("popularity_exponent", "taste_strength", "sequence_strength"):
        value = getattr(cfg, knob)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"synth.{knob} must be a finite number >= 0, got {value!r}")
    if not np.isfinite(cfg.session_gap_minutes) or cfg.session_gap_minutes <= 0:
        raise ValueError(f"synth.session_gap_minutes must be > 0, got {cfg.session_gap_minutes!r}")
    if not np.isfinite(cfg.sessions_per_user) or cfg.sessions_per_user < 1:
        raise ValueError(f"synth.sessions_per_user must be >= 1, got {cfg.sessions_per_user!r}")
    start_ts = _parse_date(cfg.start_date, "start_date")
    end_ts = _parse_date(cfg.end_date, "end_date") + 86_400 - 1  # the end date is inclusive
    if end_ts <= start_ts:
        raise ValueError(f"synth.end_date ({cfg.end_date}) must be after synth.start_date ({cfg.start_date})")
    n_rated = cfg.movies - int(round(cfg.unrated_fraction * cfg.movies))
    if n_rated < 1:
        raise ValueError(f"synth.unrated_fraction={cfg.unrated_fraction} leaves no rated movie "
                         f"of synth.movies={cfg.movies}")
    if n_rated < cfg.min_user_ratings:
        raise ValueError(f"synth.min_user_ratings={cfg.min_user_ratings} exceeds the {n_rated} rated movies "
                         f"(synth.movies={cfg.movies}, synth.unrated_fraction={cfg.unrated_fraction})")
    if cfg.ratings < cfg.users * cfg.min_user_ratings:
        raise ValueError(f"synth.ratings={cfg.ratings} is fewer than synth.users * synth.min_user_ratings "
                         f"= {cfg.users * cfg.min_user_ratings}")
    if cfg.ratings > cfg.users * n_rated:
        raise ValueError(f"synth.ratings={cfg.ratings} exceeds synth.users * rated movies = {cfg.users * n_rated} "
                         f"(a user rates a movie at most once)")
    return _Plan(n_rated=n_rated, start_ts=start_ts, end_ts=end_ts)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace it")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temporary directory onto ``out_dir`` (replacing an old one)."""
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=tmp.parent))
        os.rename(out_dir, trash / "old")
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(trash / "old", out_dir)  # put the old one back
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


@dataclass
class _Data:
    """Everything that goes into the three files (indices are 0-based)."""

    movie_ids: np.ndarray      # (movies,) MovieID of each movie index
    titles: list[str]
    years: np.ndarray
    genre_hot: np.ndarray      # (movies, 18) bool
    gender: np.ndarray         # (users,) 'M'/'F'
    age: np.ndarray            # (users,) ML-1M age code
    occupation: np.ndarray     # (users,) 0..20
    zips: list[str]
    user_idx: np.ndarray       # (ratings,) sorted by user, then time
    movie_idx: np.ndarray
    rating: np.ndarray         # 1..5
    ts: np.ndarray             # unix seconds


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles into (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)


def _simulate(cfg: SynthConfig, plan: _Plan, report: Progress) -> _Data:
    """Draw movies, users, choices, order, ratings and times (one child RNG per stage)."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(8)]
    rng_movies, rng_users, rng_counts, rng_choice, rng_order, rng_rating, rng_time, rng_titles = streams
    n_users, n_movies, d = cfg.users, cfg.movies, cfg.latent_dim
    n_genres = len(SYNTH_GENRES)

    # ---- movies: angle on the taste circle, genres near that angle, year, popularity
    report("movies", 0.0)
    theta = rng_movies.uniform(-np.pi, np.pi, n_movies)
    genre_angle = np.array([2 * np.pi * _GENRE_CIRCLE.index(g) / n_genres for g in SYNTH_GENRES])
    freq = np.array([_GENRE_FREQ[g] for g in SYNTH_GENRES], dtype=np.float64)
    k_genres = 1 + rng_movies.choice(len(_GENRES_PER_MOVIE), size=n_movies,
                                     p=_GENRES_PER_MOVIE / _GENRES_PER_MOVIE.sum())
    genre_hot = _draw_genres(theta, genre_angle, freq, k_genres, rng_movies.gumbel(size=(n_movies, n_genres)))
    gi = {g: i for i, g in enumerate(SYNTH_GENRES)}

    # release years: mostly the 1990s (median ~1994), a long tail back to 1919
    recent = rng_movies.random(n_movies) < _RECENT_YEAR_SHARE
    back_recent = rng_movies.choice(len(_RECENT_YEAR_WEIGHTS), size=n_movies,
                                    p=_RECENT_YEAR_WEIGHTS / _RECENT_YEAR_WEIGHTS.sum())
    back_old = len(_RECENT_YEAR_WEIGHTS) + np.floor(rng_movies.exponential(_OLD_YEAR_SCALE, n_movies))
    years = np.clip(2000 - np.where(recent, back_recent, back_old), 1919, 2000).astype(np.int64)
    for genre, (share, first, last) in _GENRE_ERAS.items():
        era = genre_hot[:, gi[genre]] & (rng_movies.random(n_movies) < share)
        years[era] = rng_movies.integers(first, last + 1, int(era.sum()))
    titles = _titles(rng_titles, genre_hot, years)  # sequels copy genres and follow their original

    # which movies nobody rates, and a power-law popularity over the rest
    rated = np.zeros(n_movies, dtype=bool)
    rated[rng_movies.permutation(n_movies)[:plan.n_rated]] = True
    rank_key = rng_movies.standard_normal(n_movies) + _POP_RECENCY * (years - 1990) / 10.0
    rank_key[~rated] = -np.inf
    pop_rank = np.empty(n_movies, dtype=np.float64)
    pop_rank[np.argsort(-rank_key, kind="stable")] = np.arange(n_movies)
    rel_rank = pop_rank / plan.n_rated
    log_pop = (-_POP_ALPHA * np.log(rel_rank + _POP_OFFSET)
               + _POP_TAIL * np.log(np.clip(1 - rel_rank, 0, 1) + _POP_TAIL_EPS))
    log_pop -= log_pop[rated].max()

    # latent vectors: genre embeddings shared by movies and users
    genre_emb = rng_movies.standard_normal((n_genres, d))
    genre_norm = genre_hot / genre_hot.sum(axis=1, keepdims=True)
    movie_vec = (_MOVIE_GENRE_TASTE * (genre_norm @ genre_emb)
                 + _MOVIE_OWN_TASTE * rng_movies.standard_normal((n_movies, d)))
    pop_z = (log_pop - log_pop[rated].mean()) / (log_pop[rated].std() + 1e-9)
    genre_shift = np.array([_GENRE_RATING_SHIFT.get(g, 0.0) for g in SYNTH_GENRES])
    quality = (_MOVIE_QUALITY_SD * rng_movies.standard_normal(n_movies) + _QUALITY_POPULARITY * pop_z
               + genre_norm @ genre_shift)
    id_span = n_movies + int(round(_MOVIE_ID_GAP_SHARE * n_movies))
    movie_ids = np.sort(rng_movies.choice(np.arange(1, id_span + 1), size=n_movies, replace=False))
    movie_ids[0] = 1

    # ---- users: demographics, genre preferences, latent taste, arc on the circle
    report("users", 0.1)
    ages = np.array(sorted(AGE_BUCKETS))  # ML-1M codes 1, 18, 25, 35, 45, 50, 56
    age_weights = np.array([_AGE_COUNTS[a] for a in ages], dtype=np.float64)
    age = rng_users.choice(ages, size=n_users, p=age_weights / age_weights.sum())
    gender = np.where(rng_users.random(n_users) < _MALE_SHARE, "M", "F")
    occ_odds = np.tile(_OCCUPATION_COUNTS, (len(ages), 1))
    for occ, by_age in _OCC_AGE_ODDS.items():
        occ_odds[:, occ] *= [by_age[a] for a in ages]
    occ_cdf = np.cumsum(occ_odds / occ_odds.sum(axis=1, keepdims=True), axis=1)
    age_row = np.searchsorted(ages, age)
    occupation = np.minimum((occ_cdf[age_row] < rng_users.random(n_users)[:, None]).sum(axis=1), len(OCCUPATIONS) - 1)
    zips = _zips(rng_users, n_users)

    pref = _USER_GENRE_SD * rng_users.standard_normal((n_users, n_genres))
    occ_shift = _OCC_GENRE_SD * rng_users.standard_normal((len(OCCUPATIONS), n_genres))
    pref += occ_shift[occupation]
    for code, shifts in _AGE_GENRE_SHIFT.items():
        pref[age == code] += np.array([shifts.get(g, 0.0) for g in SYNTH_GENRES])
    for sex, shifts in _GENDER_GENRE_SHIFT.items():
        pref[gender == sex] += np.array([shifts.get(g, 0.0) for g in SYNTH_GENRES])
    user_vec = (_USER_GENRE_TASTE * (pref @ genre_emb) / np.sqrt(n_genres)
                + _USER_OWN_TASTE * rng_users.standard_normal((n_users, d)))
    # the arc's centre points at the user's favourite part of the circle
    weights = np.exp(_CENTRE_PREF_WEIGHT * pref) * freq[None, :]
    centre = np.angle(weights @ np.exp(1j * genre_angle)) + _ARC_CENTER_SD * rng_users.standard_normal(n_users)
    direction = np.where(rng_users.random(n_users) < _FORWARD_SHARE, 1.0, -1.0)
    user_bias = _USER_BIAS_SD * rng_users.standard_normal(n_users) + np.array([_AGE_RATING_SHIFT[a] for a in age])

    # ---- how many ratings each user gives
    counts = _ratings_per_user(rng_counts, n_users, cfg.ratings, cfg.min_user_ratings, plan.n_rated)
    arc = np.minimum(_ARC_BASE * np.exp(_ARC_SPREAD * rng_users.standard_normal(n_users))
                     + _ARC_SHARE_WIDEN * counts / plan.n_rated * 2 * np.pi, 2 * np.pi)
    arc = np.maximum(arc, _ARC_MIN)

    # ---- which movies: Gumbel top-k over popularity + taste + genre/demography + arc
    report("choices", 0.2)
    user_idx, movie_idx = _choose(cfg, rng_choice, counts, log_pop, rated, user_vec, movie_vec, pref, genre_norm,
                                  theta, centre, arc, report)
    movie_idx = _cover_rated(rng_choice, user_idx, movie_idx, rated, n_movies)

    # ---- order along the (drifting) arc, with noise
    report("order", 0.6)
    offset = _wrap(theta[movie_idx] - centre[user_idx]) * direction[user_idx]
    half = arc[user_idx] / 2
    on_arc = np.abs(offset) <= half + _ARC_MARGIN
    if cfg.sequence_strength > 0:
        # on-arc movies at their arc position, the few picks far off the arc anywhere
        position = np.where(on_arc, offset / arc[user_idx] + 0.5, rng_order.random(len(movie_idx)))
        position += rng_order.standard_normal(len(movie_idx)) * (_ORDER_NOISE / cfg.sequence_strength) / arc[user_idx]
    else:
        position = rng_order.random(len(movie_idx))  # no sequential signal at all
    order = np.lexsort((position, user_idx))
    user_idx, movie_idx = user_idx[order], movie_idx[order]
    outside = np.maximum(np.abs(offset[order]) - half[order], 0.0)

    # ---- ratings: bias + quality + taste match + noise, mapped onto ML-1M's histogram
    report("ratings", 0.7)
    taste = np.einsum("ij,ij->i", user_vec[user_idx], movie_vec[movie_idx]) / np.sqrt(d)
    genre_match = np.einsum("ij,ij->i", pref[user_idx], genre_norm[movie_idx])
    score = (user_bias[user_idx] + quality[movie_idx] + _RATING_TASTE_SD * taste + _RATING_GENRE * genre_match
             - _RATING_ARC * outside + _RATING_NOISE_SD * rng_rating.standard_normal(len(user_idx)))
    rating = _quantile_ratings(score)

    # ---- timestamps: sessions minutes apart, sessions days/weeks apart, early-heavy
    report("timestamps", 0.8)
    ts = _timestamps(cfg, plan, rng_time, counts)

    return _Data(movie_ids=movie_ids, titles=titles, years=years, genre_hot=genre_hot, gender=gender, age=age,
                 occupation=occupation, zips=zips, user_idx=user_idx, movie_idx=movie_idx, rating=rating, ts=ts)


def _draw_genres(theta: np.ndarray, genre_angle: np.ndarray, freq: np.ndarray, k_genres: np.ndarray,
                 gumbel: np.ndarray) -> np.ndarray:
    """Multi-hot genres: ``k`` genres per movie by Gumbel top-k, favouring genres near its angle.

    The angle preference distorts the base rates (genres with busy neighbours gain), so
    the base-rate offsets are adjusted a few rounds, on the same noise, until the genre
    mix matches ML-1M's. Cheap: movies x 18.
    """
    n_movies, n_genres = gumbel.shape
    near = _GENRE_ANGLE_KAPPA * np.cos(theta[:, None] - genre_angle[None, :]) + gumbel
    target = freq / freq.sum()
    offset = np.log(freq)
    take = np.arange(n_genres)[None, :] < k_genres[:, None]
    rows = np.broadcast_to(np.arange(n_movies)[:, None], (n_movies, n_genres))
    for _ in range(_GENRE_CALIBRATION_ROUNDS + 1):
        ranked = np.argsort(-(offset[None, :] + near), axis=1, kind="stable")
        genre_hot = np.zeros((n_movies, n_genres), dtype=bool)
        genre_hot[rows[take], ranked[take]] = True
        share = (genre_hot.sum(axis=0) + 0.5) / (genre_hot.sum() + 0.5 * n_genres)
        offset = offset + np.log(target / share)
    return genre_hot


def _ratings_per_user(rng: np.random.Generator, n_users: int, total: int, min_n: int, cap: int) -> np.ndarray:
    """Per-user counts: ``min_n`` + a soft-capped lognormal excess, summing exactly to ``total``.

    The lognormal gives ML-1M's long tail; the soft cap keeps the heaviest user near
    60% of the catalogue (ML-1M: 2,314 of 3,706) instead of rating everything.
    """
    # stratified normal quantiles, randomly assigned: the shape (median, heaviest user) is
    # the same for every seed instead of hanging on the luck of a few extreme draws
    quantile = NormalDist().inv_cdf
    z = np.array([quantile((i + 0.5) / n_users) for i in range(n_users)])[rng.permutation(n_users)]
    x = np.exp(_USER_COUNT_SIGMA * z)

    def expected(scale: float, soft: float) -> np.ndarray:
        y = scale * x
        excess = y if np.isinf(soft) else y * soft / (soft + y)
        return np.minimum(min_n + excess, cap)

    soft = max(_USER_SOFTCAP_SHARE * (cap - min_n), 1.0)
    if expected(1e12, soft).sum() < total:
        soft = np.inf  # only a near-complete matrix reaches this total: drop the soft cap
    lo, hi = 0.0, 1.0
    while expected(hi, soft).sum() < total:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid, soft).sum() < total else (lo, mid)
    f = expected(hi, soft)
    counts = np.floor(f).astype(np.int64)
    frac = f - counts
    while (missing := total - int(counts.sum())) != 0:  # a few passes at most
        if missing > 0:
            room = np.flatnonzero(counts < cap)
            pick = room[np.argsort(-frac[room], kind="stable")[:missing]]
            counts[pick] += 1
        else:
            room = np.flatnonzero(counts > min_n)
            pick = room[np.argsort(frac[room], kind="stable")[:-missing]]
            counts[pick] -= 1
        frac[pick] = 0.0
    return counts


def _choose(cfg: SynthConfig, rng: np.random.Generator, counts: np.ndarray, log_pop: np.ndarray, rated: np.ndarray,
            user_vec: np.ndarray, movie_vec: np.ndarray, pref: np.ndarray, genre_norm: np.ndarray,
            theta: np.ndarray, centre: np.ndarray, arc: np.ndarray, report: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Each user's movie set by Gumbel top-k (sampling without replacement ~ exp(logit)).

    Users are processed in chunks of similar activity so one ``argpartition`` at the
    chunk's largest count serves all rows; the dense logits never exceed one chunk.
    """
    n_users, n_movies = len(counts), len(log_pop)
    base = np.where(rated, cfg.popularity_exponent * log_pop, -np.inf)
    movie_t = movie_vec.T / np.sqrt(movie_vec.shape[1])
    genre_t = genre_norm.T
    by_count = np.argsort(counts, kind="stable")
    chunk = max(1, 2_000_000 // n_movies)
    users_out, movies_out = [], []
    for start in range(0, n_users, chunk):
        rows = by_count[start:start + chunk]
        k = counts[rows]
        outside = np.maximum(np.abs(_wrap(theta[None, :] - centre[rows, None])) - arc[rows, None] / 2, 0.0)
        taste = (_LATENT_CHOICE_SCALE * (user_vec[rows] @ movie_t) + _GENRE_CHOICE_SCALE * (pref[rows] @ genre_t)
                 - _ARC_CHOICE_WEIGHT * outside)
        logits = base[None, :] + cfg.taste_strength * taste + rng.gumbel(size=(len(rows), n_movies))
        kmax = int(k.max())
        if kmax < n_movies:
            top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
        else:
            top = np.broadcast_to(np.arange(n_movies), (len(rows), n_movies))
        vals = np.take_along_axis(logits, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-vals, axis=1, kind="stable"), axis=1)
        keep = np.arange(kmax)[None, :] < k[:, None]
        users_out.append(np.broadcast_to(rows[:, None], top.shape)[keep])
        movies_out.append(top[keep])
        report("choices", round(0.2 + 0.4 * min(1.0, (start + chunk) / n_users), 4))
    user_idx = np.concatenate(users_out)
    movie_idx = np.concatenate(movies_out)
    order = np.argsort(user_idx, kind="stable")
    return user_idx[order], movie_idx[order]


def _cover_rated(rng: np.random.Generator, user_idx: np.ndarray, movie_idx: np.ndarray, rated: np.ndarray,
                 n_movies: int) -> np.ndarray:
    """Give every movie meant to be rated at least one rating (ML-1M rates exactly 3,706).

    A movie the draw left unrated takes over a random rating row (so usually one of a
    popular movie, which must keep at least two ratings) of a user who has not rated
    it; a handful of swaps at ML-1M's shape, so a short loop.
    """
    movie_idx = movie_idx.copy()
    per_movie = np.bincount(movie_idx, minlength=n_movies)
    missing = np.flatnonzero(rated & (per_movie == 0))
    if len(missing) == 0:
        return movie_idx
    starts = np.searchsorted(user_idx, np.arange(user_idx.max() + 2))
    attempts = 50 * len(missing)  # bounded: with too few ratings to go round, some stay unrated
    for m in missing:
        while attempts > 0:
            attempts -= 1
            row = int(rng.integers(len(movie_idx)))
            donor, u = movie_idx[row], user_idx[row]
            if per_movie[donor] < _DONOR_MIN_RATINGS or np.any(movie_idx[starts[u]:starts[u + 1]] == m):
                continue
            movie_idx[row] = m
            per_movie[donor] -= 1
            per_movie[m] += 1
            break
    return movie_idx


def _quantile_ratings(score: np.ndarray) -> np.ndarray:
    """Map scores to 1..5 so the histogram equals ML-1M's shares exactly (up to rounding)."""
    n = len(score)
    bounds = np.round(np.cumsum(_RATING_COUNTS) / _RATING_COUNTS.sum() * n).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(score, kind="stable")] = np.arange(n)
    return (np.searchsorted(bounds, rank, side="right") + 1).astype(np.int64)


def _timestamps(cfg: SynthConfig, plan: _Plan, rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Unix seconds per rating, increasing along each user's sequence.

    Ratings of a session are ``session_gap_minutes`` apart on average (at least one
    second, so a sort by time keeps the generated order); sessions are days to weeks
    apart. Most users start in the first months (ML-1M: ~90% of ratings in 2000); a
    timeline that would run past ``end_date`` has its between-session gaps shrunk.
    """
    n_users, total = len(counts), int(counts.sum())
    span = plan.end_ts - plan.start_ts
    early = rng.random(n_users) < _EARLY_USER_SHARE
    t0 = plan.start_ts + span * np.where(early, _EARLY_SPAN_SHARE, 1.0) * rng.random(n_users)
    user_of = np.repeat(np.arange(n_users), counts)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(total) - first[user_of]

    # session starts: 1 + Poisson(sessions_per_user - 1) sessions, cut points skewed late
    n_sessions = np.minimum(1 + rng.poisson(cfg.sessions_per_user - 1, n_users), counts)
    n_cuts = n_sessions - 1
    cut_user = np.repeat(np.arange(n_users), n_cuts)
    cut_pos = 1 + np.floor((counts[cut_user] - 1) * rng.random(len(cut_user)) ** _SESSION_CUT_SKEW).astype(np.int64)
    cut_pos = np.minimum(cut_pos, counts[cut_user] - 1)
    session_start = np.zeros(total, dtype=bool)
    session_start[first[cut_user] + cut_pos] = True

    gap_s = cfg.session_gap_minutes * 60.0
    within = np.where(pos == 0, 0.0, 1.0 + rng.exponential(max(gap_s - 1.0, 1e-9), total))
    between = np.zeros(total)
    starts_at = np.flatnonzero(session_start)
    between[starts_at] = (86_400 * _SESSION_GAP_MEDIAN_DAYS
                          * np.exp(_SESSION_GAP_SIGMA * rng.standard_normal(len(starts_at))))
    within[session_start] = 0.0
    cum_w = np.cumsum(within)
    cum_g = np.cumsum(between)
    cum_w -= np.repeat(cum_w[first] - within[first], counts)
    cum_g -= np.repeat(cum_g[first] - between[first], counts)
    last = first + counts - 1
    w_tot, g_tot = cum_w[last], cum_g[last]

    avail = plan.end_ts - t0
    g_scale = np.where(w_tot + g_tot > avail, np.clip((avail - w_tot) / np.maximum(g_tot, 1e-9), 0.0, 1.0), 1.0)
    t0 = np.where(w_tot > avail, np.maximum(plan.start_ts, plan.end_ts - w_tot), t0)
    w_scale = np.minimum(1.0, (plan.end_ts - t0) / np.maximum(w_tot, 1e-9))
    ts = t0[user_of] + cum_w * w_scale[user_of] + cum_g * g_scale[user_of]
    return np.clip(np.floor(ts), plan.start_ts, plan.end_ts).astype(np.int64)


# --------------------------------------------------------------------------------------
# Titles and demographics
# --------------------------------------------------------------------------------------


def _titles(rng: np.random.Generator, genre_hot: np.ndarray, years: np.ndarray) -> list[str]:
    """ML-style titles with the year, words drawn mostly from the movie's genres; some sequels.

    A cheap loop over movies (thousands, not millions). Sequels copy an earlier movie's
    base title and genres and get " 2" (or the next number) and a later year; years
    of sequels are adjusted in place so the sequel follows its original.
    """
    n = len(years)
    bases: list[str] = []
    for j in range(n):
        genres = [SYNTH_GENRES[g] for g in np.flatnonzero(genre_hot[j])]

        def word() -> str:
            if rng.random() < _TITLE_GENRE_WORD_SHARE:
                return str(rng.choice(_GENRE_WORDS[genres[int(rng.integers(len(genres)))]]))
            return str(rng.choice(_GENERIC_WORDS))

        template = int(rng.integers(8))
        if template == 0:
            base = word()
        elif template == 1:
            base = f"The {word()}"
        elif template == 2:
            base = f"{rng.choice(_GENERIC_WORDS)} {word()}"
        elif template == 3:
            base = f"The {rng.choice(_GENERIC_WORDS)} {word()}"
        elif template == 4:
            base = f"{word()} of the {word()}"
        elif template == 5:
            base = f"{rng.choice(_NAMES)}'s {word()}"
        elif template == 6:
            base = f"A {word()} in {rng.choice(_GENERIC_WORDS)} {word()}"
        else:
            base = f"{word()}: The {word()} {word()}"
        bases.append(base)

    # sequels: re-use an earlier movie's root title, genres and a later year
    root = list(bases)
    sequel_no: dict[str, int] = {}
    is_sequel = rng.random(n) < _SEQUEL_SHARE
    for j in np.flatnonzero(is_sequel[1:]) + 1:
        orig = int(rng.integers(j))
        root[j] = root[orig]
        number = sequel_no[root[j]] = sequel_no.get(root[j], 1) + 1
        bases[j] = f"{root[j]} {number}"
        genre_hot[j] = genre_hot[orig]
        years[j] = min(2000, int(years[orig]) + int(rng.integers(1, 6)))
    titles = []
    seen: set[str] = set()
    for j, base in enumerate(bases):
        title = f"{_trailing_article(base)} ({years[j]})"
        for suffix in _CLASH_SUFFIXES:  # a rare clash: keep (title, year) unique
            if title not in seen:
                break
            title = f"{_trailing_article(base + suffix)} ({years[j]})"
        seen.add(title)
        titles.append(title)
    return titles


def _trailing_article(title: str) -> str:
    """'The Harbor' -> 'Harbor, The' (MovieLens moves leading articles to the end)."""
    for article in _ARTICLES:
        if title.startswith(article + " "):
            return f"{title[len(article) + 1:]}, {article}"
    return title


def _zips(rng: np.random.Generator, n: int) -> list[str]:
    """5-digit US zip codes, a few ZIP+4 (ML-1M has both)."""
    main = rng.integers(1000, 99999, n)
    plus4 = rng.integers(1000, 9999, n)
    ext = rng.random(n) < _ZIP_PLUS4_SHARE
    return [f"{z:05d}-{p:04d}" if e else f"{z:05d}" for z, p, e in zip(main.tolist(), plus4.tolist(), ext.tolist())]


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _int_lines(columns: Sequence[np.ndarray], sep: bytes = b"::") -> bytes:
    """``a::b::c\\n`` lines from non-negative integer columns, without a Python loop per row.

    Each column becomes a right-aligned ASCII digit matrix plus a mask of its
    significant digits; the masked bytes of all columns and separators, read row by
    row, are exactly the lines.
    """
    n = len(columns[0])
    chars: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for c, column in enumerate(columns):
        col = np.asarray(column, dtype=np.int64)
        if n and int(col.min()) < 0:
            raise ValueError("only non-negative integers can be formatted")
        width = len(str(int(col.max()))) if n else 1
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        chars.append(((col[:, None] // powers[None, :]) % 10 + 48).astype(np.uint8))
        n_digits = 1 + (col[:, None] >= 10 ** np.arange(1, width, dtype=np.int64)[None, :]).sum(axis=1)
        masks.append(np.arange(width)[None, :] >= (width - n_digits)[:, None])
        tail = np.frombuffer(sep if c < len(columns) - 1 else b"\n", dtype=np.uint8)
        chars.append(np.broadcast_to(tail, (n, len(tail))))
        masks.append(np.ones((n, len(tail)), dtype=bool))
    return np.concatenate(chars, axis=1)[np.concatenate(masks, axis=1)].tobytes()


def _write_files(directory: Path, cfg: SynthConfig, data: _Data) -> None:
    """The three .dat files (latin-1, ``\\n``) and a README naming the seed and knobs."""
    ratings = _int_lines([data.user_idx + 1, data.movie_ids[data.movie_idx], data.rating, data.ts])
    (directory / "ratings.dat").write_bytes(ratings)

    names = [_ML1M_GENRE_SPELLING.get(g, g) for g in SYNTH_GENRES]
    movie_lines = [f"{mid}::{title}::{'|'.join(names[g] for g in np.flatnonzero(hot))}\n"
                   for mid, title, hot in zip(data.movie_ids.tolist(), data.titles, data.genre_hot)]
    (directory / "movies.dat").write_bytes("".join(movie_lines).encode("latin-1"))

    user_lines = [f"{u + 1}::{g}::{a}::{o}::{z}\n" for u, (g, a, o, z) in
                  enumerate(zip(data.gender.tolist(), data.age.tolist(), data.occupation.tolist(), data.zips))]
    (directory / "users.dat").write_bytes("".join(user_lines).encode("latin-1"))

    knobs = "\n".join(f"  {k} = {v!r}" for k, v in dataclasses.asdict(cfg).items())
    readme = (
        "Synthetic MovieLens data in the ML-1M layout, written by pipeline.synth.generate.\n"
        "Not real ratings: a seeded simulation calibrated on ML-1M's published shape\n"
        "(see docs/architecture.md, 'Synthetic data calibration'). The same seed and knobs\n"
        "write byte-identical files.\n\n"
        f"seed = {cfg.seed}\n"
        f"users = {cfg.users}, movies listed = {cfg.movies}, ratings = {len(data.rating)}\n\n"
        f"knobs (SynthConfig):\n{knobs}\n\n"
        "files: ratings.dat (UserID::MovieID::Rating::Timestamp, sorted by user then time),\n"
        "       movies.dat (MovieID::Title::Genres), users.dat (UserID::Gender::Age::Occupation::Zip-code);\n"
        "       latin-1, '\\n' line endings.\n"
    )
    (directory / "README.synthetic.txt").write_bytes(readme.encode("latin-1"))

"""Canonical vocabularies and table schemas shared by every plane.

MovieLens releases disagree on details (``Children's`` vs ``Children``, occupation
codes vs names, raw ages vs age buckets). Loaders normalise to the values here so
that features, recall and the model see one vocabulary whatever the source.
"""

from __future__ import annotations

import pyarrow as pa

# The 18 ML-1M genres plus IMAX (ML-latest). "(no genres listed)" maps to no genre.
GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western", "IMAX",
)
GENRE_INDEX: dict[str, int] = {g: i for i, g in enumerate(GENRES)}
GENRE_ALIASES: dict[str, str] = {"Children's": "Children", "Childrens": "Children", "Film Noir": "Film-Noir",
                                 "SciFi": "Sci-Fi", "Science Fiction": "Sci-Fi"}
NO_GENRE = "(no genres listed)"

# ML-1M age buckets: code -> label. ML-100K's raw ages are mapped with age_bucket().
AGE_BUCKETS: dict[int, str] = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}

# ML-1M occupation codes -> canonical names (ML-100K already uses names, mapped by OCCUPATION_ALIASES).
OCCUPATIONS: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)
OCCUPATION_ALIASES: dict[str, str] = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer", "entertainment": "artist",
    "executive": "executive/managerial", "healthcare": "doctor/health care", "homemaker": "homemaker",
    "lawyer": "lawyer", "librarian": "academic/educator", "marketing": "sales/marketing", "none": "other",
    "other": "other", "programmer": "programmer", "retired": "retired", "salesman": "sales/marketing",
    "scientist": "scientist", "student": "college/grad student", "technician": "technician/engineer",
    "writer": "writer",
}


def age_bucket(age: int) -> int:
    """ML-1M age bucket code of a raw age (ML-100K gives raw ages, ML-1M gives codes)."""
    if age < 18:
        return 1
    for lower, code in ((56, 56), (50, 50), (45, 45), (35, 35), (25, 25)):
        if age >= lower:
            return code
    return 18


def normalise_genre(name: str) -> str | None:
    """Canonical genre name, None for 'no genre'; raises ValueError for an unknown genre."""
    name = name.strip()
    if not name or name == NO_GENRE:
        return None
    name = GENRE_ALIASES.get(name, name)
    if name not in GENRE_INDEX:
        raise ValueError(f"unknown genre {name!r}")
    return name


# Typed tables written by the ingest job (parquet). `line` is the 1-based line of the
# source file: docs/evaluation.md orders ties in time by file order.
RATINGS = pa.schema([("user_id", pa.int32()), ("movie_id", pa.int32()), ("rating", pa.float32()),
                     ("ts", pa.int64()), ("line", pa.int64())])
MOVIES = pa.schema([("movie_id", pa.int32()), ("title", pa.string()), ("year", pa.int32()),
                    ("genres", pa.list_(pa.string()))])
USERS = pa.schema([("user_id", pa.int32()), ("gender", pa.string()), ("age", pa.int32()),
                   ("age_bucket", pa.int32()), ("occupation", pa.string()), ("zip", pa.string())])
TAGS = pa.schema([("user_id", pa.int32()), ("movie_id", pa.int32()), ("tag", pa.string()), ("ts", pa.int64()),
                  ("line", pa.int64())])
TABLES: dict[str, pa.Schema] = {"ratings": RATINGS, "movies": MOVIES, "users": USERS, "tags": TAGS}

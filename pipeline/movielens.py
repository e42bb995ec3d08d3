"""MovieLens layout detection and row parsing.

Every plane starts from a MovieLens directory, and the official releases disagree on
almost everything: file names, separators (tab, ``|``, ``::``, CSV with quoting),
encodings (latin-1 for ML-100K/ML-1M, UTF-8 for ML-latest), demographics (raw ages
and occupation names in ML-100K, codes in ML-1M, none at all in ML-latest) and genre
encoding (19 flag columns in ML-100K, ``|``-separated names elsewhere). This module is
the one place that knows those details; everything downstream sees the typed tables of
:mod:`pipeline.schemas`.

The parser is deliberately free of Spark: :func:`parse_lines` is a pure generator over
``(bytes, 0-based index)`` pairs, which is what ``sc.textFile(..., use_unicode=False)
.zipWithIndex()`` produces, so the Spark ingest job and the plain-Python
:func:`read_table` share one implementation (and one set of error messages). Bad rows
are *yielded*, never raised, so the caller decides between failing and skipping.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.schemas import (
    AGE_BUCKETS,
    OCCUPATION_ALIASES,
    OCCUPATIONS,
    TABLES,
    age_bucket,
    normalise_genre,
)

__all__ = [
    "LAYOUTS", "DatasetError", "BadRowError", "Source", "Layout",
    "detect_layout", "parse_lines", "read_table",
]

ML_100K, ML_1M, ML_LATEST = "ml-100k", "ml-1m", "ml-latest"

# table -> (file name, required); the order of LAYOUTS is the detection preference.
LAYOUTS: dict[str, dict[str, tuple[str, bool]]] = {
    ML_100K: {"ratings": ("u.data", True), "movies": ("u.item", True), "users": ("u.user", True)},
    ML_1M: {"ratings": ("ratings.dat", True), "movies": ("movies.dat", True), "users": ("users.dat", True)},
    ML_LATEST: {"ratings": ("ratings.csv", True), "movies": ("movies.csv", True), "tags": ("tags.csv", False)},
}
# Files that identify a layout without being read (links.csv maps to IMDb/TMDb ids we do not use).
_EXTRA_MARKERS: dict[str, tuple[str, ...]] = {ML_LATEST: ("links.csv",)}
_ENCODING = {ML_100K: "latin-1", ML_1M: "latin-1", ML_LATEST: "utf-8"}
_SEPARATOR = {ML_100K: "|", ML_1M: "::", ML_LATEST: ","}
_CSV_HEADERS: dict[str, tuple[str, ...]] = {
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "movies": ("movieId", "title", "genres"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
}
_LAYOUT_HELP = ("ML-100K (u.data, u.item, u.user), ML-1M (ratings.dat, movies.dat, users.dat), "
                "ML-latest / ML-25M / ml-latest-small (ratings.csv, movies.csv, optional tags.csv, links.csv)")

# ML-100K's u.item genre flag columns, in file order; "unknown" carries no genre.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
_ML100K_CANONICAL: tuple[str | None, ...] = tuple(normalise_genre(g) if g != "unknown" else None
                                                  for g in ML100K_GENRES)
_OCCUPATION_NAMES: dict[str, str] = {**{o.lower(): o for o in OCCUPATIONS}, **OCCUPATION_ALIASES}

# "Title (1995)", "Babylon 5 (1994-1998)", "Show (2007-)", "Death Note (2006–2007)".
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)$")
_RELEASE_YEAR = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_TEXT_LIMIT = 200


class DatasetError(Exception):
    """The dataset directory cannot be used; the message names the directory and what was expected."""


class BadRowError(DatasetError):
    """A row failed validation; str() is ``<file> line <n>: <reason>`` so users can go and look."""

    def __init__(self, path: str | Path, line: int, reason: str, text: str = "") -> None:
        self.path, self.line, self.reason, self.text = Path(path), line, reason, text
        super().__init__(f"{self.path.name} line {line}: {reason}")

    def __reduce__(self) -> tuple:  # keep picklable (Spark ships exceptions between processes)
        return (type(self), (self.path, self.line, self.reason, self.text))

    @classmethod
    def from_record(cls, src: Source, record: tuple) -> BadRowError:
        """Build the error from a ``("bad", line, text, reason)`` record yielded by :func:`parse_lines`."""
        _, line, text, reason = record
        return cls(src.path, line, reason, text)


@dataclass(frozen=True)
class Source:
    """One input file and how to parse it. Small, frozen and picklable: Spark ships it to workers."""

    path: Path
    table: str        # "ratings" | "movies" | "users" | "tags"
    layout: str       # "ml-100k" | "ml-1m" | "ml-latest"
    encoding: str     # "latin-1" never fails to decode; "utf-8" failures are bad rows
    separator: str    # "\t" (u.data), "|", "::" or "," (CSV with quoting)

    @property
    def has_header(self) -> bool:
        """Only the ML-latest CSVs start with a header line (skipped at index 0 only)."""
        return self.layout == ML_LATEST

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Layout:
    """A recognised dataset: its layout name, root directory and the sources that exist."""

    name: str
    root: Path
    sources: tuple[Source, ...]

    def source(self, table: str) -> Source | None:
        """The file of `table`, or None when the table is optional and absent (users in ML-latest, tags)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        return next((s for s in self.sources if s.table == table), None)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(s.table for s in self.sources)


# --------------------------------------------------------------------------- detection

def _markers(name: str) -> tuple[str, ...]:
    return tuple(f for f, _ in LAYOUTS[name].values()) + _EXTRA_MARKERS.get(name, ())


def _recognised(root: Path) -> list[str]:
    return [name for name in LAYOUTS if any((root / f).is_file() for f in _markers(name))]


def _missing(root: Path, name: str) -> list[str]:
    return [f for f, required in LAYOUTS[name].values() if required and not (root / f).is_file()]


def _expected(name: str) -> str:
    parts = [f if req else f"optional {f}" for f, req in LAYOUTS[name].values()]
    return ", ".join(parts)


def detect_layout(path: str | Path) -> Layout:
    """Recognise the MovieLens layout in `path` (or in its single dataset subdirectory).

    Official zips unpack to one folder (``ml-1m/``), so a directory holding exactly one
    dataset subdirectory is accepted too. Errors say which files were expected, for the
    layout that was recognised, or for every layout when nothing was recognised.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset directory does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (unpack the MovieLens zip and pass its folder)")
    found = _recognised(root)
    if not found:
        nested = sorted(d for d in root.iterdir() if d.is_dir() and _recognised(d))
        if len(nested) > 1:
            names = ", ".join(f"{d.name}/" for d in nested)
            raise DatasetError(f"{root}: contains several MovieLens datasets ({names}); pass one of them")
        if not nested:
            raise DatasetError(f"{root}: no MovieLens dataset found; expected the files of one of: {_LAYOUT_HELP}"
                               " (or a single subdirectory holding one)")
        root, found = nested[0], _recognised(nested[0])
    complete = [name for name in found if not _missing(root, name)]
    if len(complete) > 1:
        raise DatasetError(f"{root}: holds the files of several layouts ({', '.join(complete)}); keep only one")
    if not complete:
        name = found[0]
        present = [f for f in _markers(name) if (root / f).is_file()]
        raise DatasetError(f"{root}: looks like {name} (found {', '.join(present)}) but "
                           f"{', '.join(_missing(root, name))} is missing; {name} expects {_expected(name)}")
    name = complete[0]
    sources = tuple(
        Source(path=root / f, table=table, layout=name, encoding=_ENCODING[name],
               separator="\t" if f == "u.data" else _SEPARATOR[name])
        for table, (f, _) in LAYOUTS[name].items() if (root / f).is_file())
    return Layout(name=name, root=root, sources=sources)


# --------------------------------------------------------------------------- field validation

class _Bad(Exception):
    """Internal: a row failed validation; the message is the reason."""


def _id(s: str, what: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise _Bad(f"{what} {s!r} is not a positive integer") from None
    if not 0 < v <= _INT32_MAX:
        raise _Bad(f"{what} {s!r} is not a positive integer")
    return v


def _ts(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise _Bad(f"timestamp {s!r} is not a non-negative integer") from None
    if not 0 <= v <= _INT64_MAX:
        raise _Bad(f"timestamp {s!r} is not a non-negative integer")
    return v


def _rating(s: str, step: float) -> float:
    """Ratings are 0.5..5; ML-100K/1M use whole stars (step 1), ML-latest half stars (step 0.5)."""
    try:
        v = float(s)
    except ValueError:
        raise _Bad(f"rating {s!r} is not a number") from None
    if not 0.5 <= v <= 5.0:  # also rejects nan
        raise _Bad(f"rating {s!r} out of range 0.5..5")
    if (v / step) != int(v / step):
        raise _Bad(f"rating {s!r} is not a multiple of {step:g}")
    return v


def _gender(s: str) -> str:
    g = s.strip().upper()
    if g not in ("M", "F"):
        raise _Bad(f"gender {s!r} is not M or F")
    return g


def _title(s: str) -> tuple[str, int | None]:
    """Keep the title as written (stripped); the year comes from its trailing ``(YYYY)``."""
    title = s.strip()
    if not title:
        raise _Bad("empty title")
    m = _TITLE_YEAR.search(title)
    return title, int(m.group(1)) if m else None


def _genres(s: str) -> list[str]:
    out: list[str] = []
    for part in s.split("|"):
        try:
            g = normalise_genre(part)
        except ValueError:
            raise _Bad(f"unknown genre {part.strip()!r}") from None
        if g is not None and g not in out:
            out.append(g)
    return out


def _zip(s: str) -> str | None:
    return s.strip() or None


# --------------------------------------------------------------------------- row parsers (fields -> row)

def _ratings_whole(f: list[str]) -> tuple:
    return _id(f[0], "user_id"), _id(f[1], "movie_id"), _rating(f[2], 1.0), _ts(f[3])


def _ratings_half(f: list[str]) -> tuple:
    return _id(f[0], "user_id"), _id(f[1], "movie_id"), _rating(f[2], 0.5), _ts(f[3])


def _movies_named(f: list[str]) -> tuple:
    title, year = _title(f[1])
    return _id(f[0], "movie_id"), title, year, _genres(f[2])


def _movies_100k(f: list[str]) -> tuple:
    title, year = _title(f[1])
    if year is None:  # e.g. a title without "(YYYY)": fall back to the release date 01-Jan-1995
        m = _RELEASE_YEAR.match(f[2].strip())
        year = int(m.group(1)) if m else None
    genres: list[str] = []
    for flag, genre in zip(f[5:], _ML100K_CANONICAL):
        flag = flag.strip()
        if flag == "1":
            if genre is not None:
                genres.append(genre)
        elif flag != "0":
            raise _Bad(f"genre flag {flag!r} is not 0 or 1")
    return _id(f[0], "movie_id"), title, year, genres


def _users_100k(f: list[str]) -> tuple:
    try:
        age = int(f[1])
    except ValueError:
        raise _Bad(f"age {f[1]!r} is not an integer") from None
    if not 1 <= age <= 120:
        raise _Bad(f"age {f[1]!r} out of range 1..120")
    occupation = _OCCUPATION_NAMES.get(f[3].strip().lower())
    if occupation is None:
        raise _Bad(f"unknown occupation {f[3]!r}")
    return _id(f[0], "user_id"), _gender(f[2]), age, age_bucket(age), occupation, _zip(f[4])


def _users_1m(f: list[str]) -> tuple:
    try:
        code = int(f[2])
    except ValueError:
        code = -1
    if code not in AGE_BUCKETS:
        raise _Bad(f"age {f[2]!r} is not an ML-1M age code ({', '.join(map(str, AGE_BUCKETS))})")
    try:
        occ = int(f[3])
    except ValueError:
        occ = -1
    if not 0 <= occ < len(OCCUPATIONS):
        raise _Bad(f"occupation {f[3]!r} is not an ML-1M occupation code 0..{len(OCCUPATIONS) - 1}")
    return _id(f[0], "user_id"), _gender(f[1]), None, code, OCCUPATIONS[occ], _zip(f[4])


def _tags(f: list[str]) -> tuple:
    return _id(f[0], "user_id"), _id(f[1], "movie_id"), f[2].strip(), _ts(f[3])


# (layout, table) -> (row parser, number of fields)
_PARSERS: dict[tuple[str, str], tuple[Callable[[list[str]], tuple], int]] = {
    (ML_100K, "ratings"): (_ratings_whole, 4),
    (ML_100K, "movies"): (_movies_100k, 5 + len(ML100K_GENRES)),
    (ML_100K, "users"): (_users_100k, 5),
    (ML_1M, "ratings"): (_ratings_whole, 4),
    (ML_1M, "movies"): (_movies_named, 3),
    (ML_1M, "users"): (_users_1m, 5),
    (ML_LATEST, "ratings"): (_ratings_half, 4),
    (ML_LATEST, "movies"): (_movies_named, 3),
    (ML_LATEST, "tags"): (_tags, 4),
}


def _csv_split(text: str) -> list[str]:
    if '"' not in text:  # fast path: almost every line has no quoting
        return text.split(",")
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as e:
        raise _Bad(f"malformed CSV quoting ({e})") from None


def _splitter(src: Source) -> Callable[[str], list[str]]:
    if src.separator == ",":
        return _csv_split
    if src.separator == "\t":
        return str.split  # u.data is tab-separated; tolerate other whitespace too
    sep = src.separator
    return lambda text: text.split(sep)


def _sep_name(src: Source) -> str:
    return {"\t": "tab", ",": "comma"}.get(src.separator, repr(src.separator))


def parse_lines(src: Source, it: Iterable[tuple[bytes | str, int]]) -> Iterator[tuple]:
    """Parse ``(line, 0-based index)`` pairs of `src` into ``("ok", row)`` / ``("bad", line, text, reason)``.

    `row` is a tuple in the column order of ``schemas.TABLES[src.table]``; ratings and tags
    end with the 1-based source line (ties in time are ordered by file order). Bad rows
    carry the 1-based line, the decoded text cut to 200 characters and a reason such as
    ``rating '7' out of range 0.5..5``. Blank lines are skipped silently; a CSV header is
    skipped only at index 0 (a headerless CSV parses its first line as data).
    """
    try:
        parse, nfields = _PARSERS[(src.layout, src.table)]
    except KeyError:
        raise DatasetError(f"{src.path}: no parser for table {src.table!r} in layout {src.layout!r}") from None
    split = _splitter(src)
    encoding = src.encoding
    with_line = src.table in ("ratings", "tags")
    header = tuple(h.lower() for h in _CSV_HEADERS.get(src.table, ())) if src.has_header else ()
    count_reason = f"expected {nfields} {_sep_name(src)}-separated fields, got {{}}"
    for raw, index in it:
        lineno = index + 1
        if isinstance(raw, bytes):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as e:
                yield ("bad", lineno, raw.decode(encoding, "replace")[:_TEXT_LIMIT],
                       f"not valid {encoding} ({e.reason} at byte {e.start})")
                continue
        else:
            text = raw
        text = text.rstrip("\r\n")
        if index == 0:
            text = text.lstrip("\ufeff")  # a byte-order mark would otherwise break the header or first id
        if not text.strip():
            continue
        try:
            fields = split(text)
            if index == 0 and header:
                names = tuple(x.strip().lower() for x in fields)
                if names == header:
                    continue
                try:
                    int(fields[0])
                except ValueError:
                    raise _Bad(f"unexpected header {text[:80]!r}; expected "
                               f"{','.join(_CSV_HEADERS[src.table])!r}") from None
            if len(fields) != nfields:
                raise _Bad(count_reason.format(len(fields)))
            row = parse(fields)
        except _Bad as e:
            yield ("bad", lineno, text[:_TEXT_LIMIT], str(e))
            continue
        yield ("ok", row + (lineno,) if with_line else row)


# --------------------------------------------------------------------------- plain-Python loader

# Columns whose values may be missing become pandas nullable integers; the rest use numpy
# dtypes of the arrow schema (strings and genre lists stay Python objects).
_NULLABLE_INT = {("movies", "year"), ("users", "age")}
_NUMPY_DTYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32}


def _frame(table: str, rows: list[tuple]) -> pd.DataFrame:
    schema = TABLES[table]
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    data: dict[str, object] = {}
    for field, values in zip(schema, columns):
        kind = str(field.type)
        if (table, field.name) in _NULLABLE_INT:
            data[field.name] = pd.array(list(values), dtype="Int32")
        elif kind in _NUMPY_DTYPES:
            data[field.name] = np.asarray(values, dtype=_NUMPY_DTYPES[kind])
        else:
            data[field.name] = pd.Series(list(values), dtype=object)
    return pd.DataFrame(data, columns=schema.names)


def _file_lines(path: Path) -> Iterator[tuple[bytes, int]]:
    with open(path, "rb") as fh:
        for index, raw in enumerate(fh):
            yield raw, index


def read_table(layout_or_dir: Layout | str | Path, table: str, on_bad_rows: str = "fail") -> tuple[pd.DataFrame, int]:
    """Load one table without Spark (tests, small datasets, tools) through the same :func:`parse_lines`.

    Returns the typed DataFrame (int32/int64/float32 numpy columns, nullable ``Int32`` for
    ``year`` and ``age``, object columns for strings and genre lists) and the number of bad
    rows skipped. ``on_bad_rows="fail"`` raises :class:`BadRowError` at the first bad row.
    An optional table that is absent yields an empty frame.
    """
    if on_bad_rows not in ("fail", "skip"):
        raise ValueError(f"on_bad_rows must be 'fail' or 'skip', not {on_bad_rows!r}")
    layout = layout_or_dir if isinstance(layout_or_dir, Layout) else detect_layout(layout_or_dir)
    src = layout.source(table)
    rows: list[tuple] = []
    bad = 0
    if src is not None:
        for record in parse_lines(src, _file_lines(src.path)):
            if record[0] == "ok":
                rows.append(record[1])
            elif on_bad_rows == "fail":
                raise BadRowError.from_record(src, record)
            else:
                bad += 1
    return _frame(table, rows), bad

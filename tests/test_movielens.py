"""MovieLens layout detection and parsing, on small fixtures in each official format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import movielens as ml
from pipeline.schemas import TABLES

from tests.movielens_fixtures import *  # noqa: F401,F403 - fixtures and format constants
from tests.movielens_fixtures import records, write


# --------------------------------------------------------------------------- ML-100K

def test_ml100k_tables(ml100k: Path) -> None:
    layout = ml.detect_layout(ml100k)
    assert (layout.name, layout.root, layout.tables) == ("ml-100k", ml100k, ("ratings", "movies", "users"))
    assert layout.source("tags") is None

    ratings, bad = ml.read_table(layout, "ratings")
    assert bad == 0
    assert records(ratings) == [(196, 242, 3.0, 881250949, 1), (186, 302, 3.0, 891717742, 2),
                                (22, 377, 1.0, 878887116, 3)]
    movies, _ = ml.read_table(layout, "movies")
    assert records(movies) == [
        (1, "Toy Story (1995)", 1995, ["Animation", "Children", "Comedy"]),
        (242, "Misérables, Les (1995)", 1995, ["Drama", "Musical", "War"]),
        (267, "unknown", None, []),
        (300, "Air Force One", 1997, ["Action", "Thriller"]),  # year from the release date
    ]
    users, _ = ml.read_table(layout, "users")
    assert records(users) == [(1, "M", 24, 18, "technician/engineer", "85711"),
                              (2, "F", 53, 50, "other", "94043"),
                              (3, "M", 7, 1, "college/grad student", "T8H1N")]


# --------------------------------------------------------------------------- ML-1M

def test_ml1m_tables_and_dtypes(ml1m: Path) -> None:
    layout = ml.detect_layout(ml1m)
    assert layout.name == "ml-1m"
    ratings, bad = ml.read_table(layout, "ratings")
    assert bad == 0
    assert records(ratings) == [(1, 1193, 5.0, 978300760, 1), (1, 661, 3.0, 978302109, 2),
                                (2, 1193, 1.0, 978298413, 3)]
    assert list(ratings.columns) == TABLES["ratings"].names
    assert [str(t) for t in ratings.dtypes] == ["int32", "int32", "float32", "int64", "int64"]

    movies, _ = ml.read_table(ml1m, "movies")
    assert records(movies) == [
        (1, "Toy Story (1995)", 1995, ["Animation", "Children", "Comedy"]),
        (73, "Misérables, Les (1995)", 1995, ["Drama", "Musical"]),
        (1193, "One Flew Over the Cuckoo's Nest (1975)", 1975, ["Drama"]),
        (661, "Café au Lait (1993)", 1993, ["Comedy"]),
    ]
    assert [str(t) for t in movies.dtypes] == ["int32", "object", "Int32", "object"]

    users, _ = ml.read_table(ml1m, "users")
    assert records(users) == [(1, "F", None, 1, "K-12 student", "48067"), (2, "M", None, 56, "self-employed", "70072")]
    assert [str(t) for t in users.dtypes] == ["int32", "object", "Int32", "int32", "object", "object"]


def test_nested_directory(tmp_path: Path, ml1m: Path) -> None:
    layout = ml.detect_layout(tmp_path)  # tmp_path holds only ml-1m/
    assert (layout.name, layout.root) == ("ml-1m", ml1m)
    assert layout.source("ratings").path == ml1m / "ratings.dat"


def test_several_nested_datasets_rejected(tmp_path: Path, ml1m: Path, latest: Path) -> None:
    with pytest.raises(ml.DatasetError, match=r"several MovieLens datasets \(ml-1m/, ml-latest-small/\)"):
        ml.detect_layout(tmp_path)


# --------------------------------------------------------------------------- ML-latest

def test_latest_tables(latest: Path) -> None:
    layout = ml.detect_layout(latest)
    assert layout.name == "ml-latest"
    assert layout.source("users") is None
    assert layout.source("ratings").has_header and layout.source("ratings").encoding == "utf-8"

    ratings, _ = ml.read_table(layout, "ratings")
    # line numbers count the header: the first rating is on line 2
    assert records(ratings) == [(1, 1, 4.0, 964982703, 2), (1, 3, 4.5, 964981247, 3), (2, 50, 0.5, 1445714835, 4)]
    movies, _ = ml.read_table(layout, "movies")
    assert records(movies) == [
        (1, "Toy Story (1995)", 1995, ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]),
        (11, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
        (3, '"Great Performances" Cats (1998)', 1998, ["Musical", "IMAX"]),
        (114335, "La cravate (1957)", 1957, []),
        (176601, "Black Mirror", None, []),
        (50, "Babylon 5 (1994-1998)", 1994, ["Sci-Fi"]),
        (140956, "Ready Player One (2007-)", 2007, ["Action"]),
        (171749, "Death Note: Desu nōto (2006–2007)", 2006, ["Thriller"]),
    ]
    tags, _ = ml.read_table(layout, "tags")
    assert records(tags) == [(2, 60756, "funny", 1445714994, 2), (2, 60756, "Highly quotable, funny", 1445714996, 3)]
    users, bad = ml.read_table(layout, "users")  # absent optional table: empty, typed
    assert (len(users), bad, list(users.columns)) == (0, 0, TABLES["users"].names)


def test_latest_without_tags(tmp_path: Path) -> None:
    root = write(tmp_path / "d", {"ratings.csv": LATEST_RATINGS, "movies.csv": LATEST_MOVIES})
    layout = ml.detect_layout(root)
    assert layout.tables == ("ratings", "movies")
    tags, bad = ml.read_table(layout, "tags")
    assert len(tags) == 0 and bad == 0


# --------------------------------------------------------------------------- parse_lines directly

def test_parse_lines_contract(latest: Path) -> None:
    src = ml.detect_layout(latest).source("ratings")
    assert pickle.loads(pickle.dumps(src)) == src
    lines = [b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r", b"1,2,3.5,10\r", b"", b"  ",
             b"userId,movieId,rating,timestamp", b"\xff,2,3,4"]
    out = list(ml.parse_lines(src, ((line, i) for i, line in enumerate(lines))))
    assert out == [
        ("ok", (1, 2, 3.5, 10, 2)),
        ("bad", 5, "userId,movieId,rating,timestamp", "user_id 'userId' is not a positive integer"),
        ("bad", 6, "\ufffd,2,3,4", "not valid utf-8 (invalid start byte at byte 0)"),
    ]


def test_headerless_csv_and_wrong_header(latest: Path) -> None:
    src = ml.detect_layout(latest).source("ratings")
    assert list(ml.parse_lines(src, [(b"7,8,5,9", 0)])) == [("ok", (7, 8, 5.0, 9, 1))]
    assert list(ml.parse_lines(src, [(b"user,movie,stars,when", 0)])) == [
        ("bad", 1, "user,movie,stars,when",
         "unexpected header 'user,movie,stars,when'; expected 'userId,movieId,rating,timestamp'")]


def test_latin1_never_fails_to_decode(ml1m: Path) -> None:
    src = ml.detect_layout(ml1m).source("movies")
    out = list(ml.parse_lines(src, [("5::Caf\u00e9 (1990)::Drama".encode("latin-1"), 0)]))
    assert out == [("ok", (5, "Café (1990)", 1990, ["Drama"]))]


# --------------------------------------------------------------------------- bad rows

BAD_CASES = [
    # (layout fixture, file, bad line, expected message)
    ("ml1m", "ratings.dat", "1::2::7::978300760", "ratings.dat line 4: rating '7' out of range 0.5..5"),
    ("ml1m", "ratings.dat", "1::2::3", "ratings.dat line 4: expected 4 '::'-separated fields, got 3"),
    ("ml1m", "ratings.dat", "x1::2::3::4", "ratings.dat line 4: user_id 'x1' is not a positive integer"),
    ("ml1m", "ratings.dat", "0::2::3::4", "ratings.dat line 4: user_id '0' is not a positive integer"),
    ("ml1m", "ratings.dat", "1::2::4.5::4", "ratings.dat line 4: rating '4.5' is not a multiple of 1"),
    ("ml1m", "ratings.dat", "1::2::4::-4", "ratings.dat line 4: timestamp '-4' is not a non-negative integer"),
    ("ml1m", "movies.dat", "9::Foo (1990)::Drama|Cowboy", "movies.dat line 5: unknown genre 'Cowboy'"),
    ("ml1m", "users.dat", "3::X::25::4::12345", "users.dat line 3: gender 'X' is not M or F"),
    ("ml1m", "users.dat", "3::M::26::4::12345",
     "users.dat line 3: age '26' is not an ML-1M age code (1, 18, 25, 35, 45, 50, 56)"),
    ("ml1m", "users.dat", "3::M::25::21::12345",
     "users.dat line 3: occupation '21' is not an ML-1M occupation code 0..20"),
    ("ml100k", "u.data", "1\t2\tthree\t4", "u.data line 4: rating 'three' is not a number"),
    ("ml100k", "u.data", "1\t2\t3", "u.data line 4: expected 4 tab-separated fields, got 3"),
    ("ml100k", "u.user", "4|30|M|astronaut|12345", "u.user line 4: unknown occupation 'astronaut'"),
    ("ml100k", "u.user", "4|30|Q|writer|12345", "u.user line 4: gender 'Q' is not M or F"),
    ("ml100k", "u.item", "5|X (1990)|||" + "|0" * 18 + "|2",
     "u.item line 5: genre flag '2' is not 0 or 1"),
    ("latest", "ratings.csv", "3,4,5.5,100", "ratings.csv line 5: rating '5.5' out of range 0.5..5"),
    ("latest", "ratings.csv", "3,4,0.25,100", "ratings.csv line 5: rating '0.25' out of range 0.5..5"),
    ("latest", "ratings.csv", "3,4,3.3,100", "ratings.csv line 5: rating '3.3' is not a multiple of 0.5"),
    ("latest", "movies.csv", "7,Heat, The (1995),Crime",
     "movies.csv line 10: expected 3 comma-separated fields, got 4"),
    ("latest", "movies.csv", '7,"Heat (1995),Crime',
     "movies.csv line 10: malformed CSV quoting (unexpected end of data)"),
    ("latest", "movies.csv", "7,Heat (1995),Krimi", "movies.csv line 10: unknown genre 'Krimi'"),
    ("latest", "movies.csv", "1.5,Heat (1995),Crime", "movies.csv line 10: movie_id '1.5' is not a positive integer"),
    ("latest", "tags.csv", "1,2,tag,soon", "tags.csv line 4: timestamp 'soon' is not a non-negative integer"),
]


@pytest.mark.parametrize("fixture,name,line,message", BAD_CASES, ids=[c[3] for c in BAD_CASES])
def test_bad_rows_fail_and_skip(request: pytest.FixtureRequest, fixture: str, name: str, line: str,
                                message: str) -> None:
    root: Path = request.getfixturevalue(fixture)
    layout = ml.detect_layout(root)
    src = next(s for s in layout.sources if s.path.name == name)
    good, _ = ml.read_table(layout, src.table)
    with open(src.path, "ab") as fh:  # append the bad row, then one more good copy of the first data row
        first = src.path.read_bytes().splitlines()[1 if src.has_header else 0]
        fh.write(line.encode(src.encoding) + b"\n" + first + b"\n")

    with pytest.raises(ml.BadRowError) as err:
        ml.read_table(layout, src.table)
    assert str(err.value) == message
    assert err.value.path == src.path and err.value.text == line
    assert err.value.line == int(message.split(" line ")[1].split(":")[0])
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == message and isinstance(again, ml.DatasetError)

    df, bad = ml.read_table(layout, src.table, on_bad_rows="skip")
    assert bad == 1 and len(df) == len(good) + 1  # the good row after the bad one is still read


def test_skip_counts_several_bad_rows(ml1m: Path) -> None:
    with open(ml1m / "ratings.dat", "a", encoding="latin-1") as fh:
        fh.write("1::2::9::1\n\nbad line\n1::2::3::4\n")
    df, bad = ml.read_table(ml1m, "ratings", on_bad_rows="skip")
    assert bad == 2
    assert records(df)[-1] == (1, 2, 3.0, 4, 7)  # blank line 5 skipped silently but still counted as a line


def test_bad_row_text_truncated(ml1m: Path) -> None:
    src = ml.detect_layout(ml1m).source("ratings")
    [(kind, line, text, reason)] = ml.parse_lines(src, [(b"1::" + b"9" * 500, 41)])
    assert (kind, line, len(text), reason) == ("bad", 42, 200, "expected 4 '::'-separated fields, got 2")


def test_read_table_rejects_unknown_policy(ml1m: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_rows"):
        ml.read_table(ml1m, "ratings", on_bad_rows="ignore")


# --------------------------------------------------------------------------- detection errors

def test_missing_required_file_named(tmp_path: Path) -> None:
    root = write(tmp_path / "ml-1m", {"ratings.dat": ML1M_RATINGS, "users.dat": ML1M_USERS})
    with pytest.raises(ml.DatasetError) as err:
        ml.detect_layout(root)
    assert str(err.value) == (f"{root}: looks like ml-1m (found ratings.dat, users.dat) but movies.dat is missing; "
                              "ml-1m expects ratings.dat, movies.dat, users.dat")


def test_missing_csv_named(tmp_path: Path) -> None:
    root = write(tmp_path / "d", {"movies.csv": LATEST_MOVIES, "links.csv": ""})
    with pytest.raises(ml.DatasetError, match=r"looks like ml-latest .* ratings\.csv is missing; "
                                              r"ml-latest expects ratings\.csv, movies\.csv, optional tags\.csv"):
        ml.detect_layout(root)


def test_empty_directory_lists_layouts(tmp_path: Path) -> None:
    with pytest.raises(ml.DatasetError) as err:
        ml.detect_layout(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: no MovieLens dataset found")
    for name in ("u.data", "u.item", "u.user", "ratings.dat", "movies.dat", "users.dat", "ratings.csv",
                 "movies.csv", "tags.csv"):
        assert name in msg


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ml.DatasetError, match="does not exist"):
        ml.detect_layout(tmp_path / "nope")
    (tmp_path / "ml-1m.zip").write_bytes(b"PK")
    with pytest.raises(ml.DatasetError, match="not a directory"):
        ml.detect_layout(tmp_path / "ml-1m.zip")


def test_unknown_table(ml1m: Path) -> None:
    with pytest.raises(ValueError, match="unknown table 'links'"):
        ml.detect_layout(ml1m).source("links")

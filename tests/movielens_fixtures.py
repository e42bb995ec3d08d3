"""MovieLens fixtures in each official format, written by the tests (shared by loader and ingest tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# --------------------------------------------------------------------------- fixtures

ML100K_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
ML100K_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "242|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/Title?Mis%E9rables"
    "|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|1|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "300|Air Force One|01-Jan-1997||http://us.imdb.com/M/title-exact?Air+Force+One+(1997)"
    "|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
)
ML100K_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|7|M|student|T8H1N\n"

ML1M_RATINGS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::1::978298413\n"
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "73::Misérables, Les (1995)::Drama|Musical\n"
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "661::Café au Lait (1993)::Comedy\n"
)
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"

LATEST_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,50,0.5,1445714835\n"
LATEST_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    '3,"""Great Performances"" Cats (1998)",Musical|IMAX\n'
    "114335,La cravate (1957),(no genres listed)\n"
    "176601,Black Mirror,(no genres listed)\n"
    "50,Babylon 5 (1994-1998),Sci-Fi\n"
    "140956,Ready Player One (2007-) ,Action\n"
    "171749,Death Note: Desu nōto (2006–2007),Thriller\n"
)
LATEST_TAGS = ('userId,movieId,tag,timestamp\n2,60756,funny,1445714994\n'
               '2,60756,"Highly quotable, funny",1445714996\n')


def write(root: Path, files: dict[str, str | bytes], encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode(encoding)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    return write(tmp_path / "ml-100k", {"u.data": ML100K_DATA, "u.item": ML100K_ITEM, "u.user": ML100K_USER,
                                        "u.genre": "unknown|0\n"}, "latin-1")


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    return write(tmp_path / "ml-1m", {"ratings.dat": ML1M_RATINGS, "movies.dat": ML1M_MOVIES,
                                      "users.dat": ML1M_USERS}, "latin-1")


@pytest.fixture
def latest(tmp_path: Path) -> Path:
    return write(tmp_path / "ml-latest-small", {"ratings.csv": LATEST_RATINGS, "movies.csv": LATEST_MOVIES,
                                                "tags.csv": LATEST_TAGS, "links.csv": "movieId,imdbId,tmdbId\n"})


def records(df: pd.DataFrame) -> list[tuple]:
    """Rows as plain Python tuples (pd.NA -> None) so values compare exactly."""
    out = []
    for row in df.itertuples(index=False):
        out.append(tuple(None if v is pd.NA else (v.item() if isinstance(v, np.generic) else v) for v in row))
    return out



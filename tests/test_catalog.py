"""The gateway's in-memory movie catalogue: listed vs recommendable movies (pure, no Redis)."""

from __future__ import annotations

from serving.catalog import Movie, MovieCatalog


def movie(mid: int, recommendable: bool = True) -> Movie:
    return Movie(movie_id=mid, title=f"m{mid}", genres=("Drama",), year=1999, title_tokens=("m",), n_ratings=3,
                 mean_rating=3.0, bayes_rating=3.0, popularity=1.0, recommendable=recommendable)


def test_listed_movies_are_known_but_only_rated_ones_recommendable() -> None:
    cat = MovieCatalog(version="v1", movies={1: movie(1), 2: movie(2, recommendable=False)})
    assert 2 in cat and cat.recommendable(1) and not cat.recommendable(2) and not cat.recommendable(3)
    assert cat.unknown([3, 1, 4, 3, 2, 4]) == [3, 4]            # each outside id once, in the order given
    inputs = cat.movie_inputs([2, 5])
    assert inputs.genres == [["Drama"], []] and inputs.years == [1999, None]

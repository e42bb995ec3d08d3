"""The pure list-shaping functions of the gateway: blend order, genre cap, reasons."""

from __future__ import annotations

from serving.blend import audience, blend, cap_genres, reason


def test_blend_orders_by_model_and_falls_back_to_recall() -> None:
    recall = [0.05, 0.04, 0.03]
    assert blend(recall, [0.1, 0.9, 0.5], recall_weight=0.0) == [1, 2, 0]
    assert blend(recall, None, recall_weight=0.0) == [0, 1, 2]          # degraded: recall order
    # a large recall weight lets the recall order win over small model differences
    assert blend(recall, [0.50, 0.51, 0.52], recall_weight=10.0) == [0, 1, 2]


def test_genre_cap_limits_one_genre_but_never_shortens_the_list() -> None:
    genres = {0: ["Drama"], 1: ["Drama"], 2: ["Drama"], 3: ["Comedy"], 4: ["Drama", "War"], 5: ["Action"]}
    picked = cap_genres(range(6), genres.__getitem__, k=4, cap=0.5)
    assert picked == [0, 1, 3, 5]                                        # at most ceil(0.5 * 4) = 2 dramas
    assert sum("Drama" in genres[i] for i in picked) == 2
    only_drama = {i: ["Drama"] for i in range(5)}
    assert cap_genres(range(5), only_drama.__getitem__, k=4, cap=0.5) == [0, 1, 2, 3]  # filled from held items
    assert cap_genres(range(6), genres.__getitem__, k=4, cap=1.0) == [0, 1, 2, 3]


def test_reasons_name_the_evidence() -> None:
    kw = dict(user_genres=["Sci-Fi"], age_bucket=25, gender="F")
    assert reason(["sequential"], ["Drama"], watched_title="Alien (1979)", **kw) == "because you watched Alien (1979)"
    assert reason(["sequential"], ["Drama"], watched_title=None, **kw).startswith("often watched right after")
    assert reason(["genre_popular"], ["Action", "Sci-Fi"], watched_title=None, **kw) == "popular in Sci-Fi"
    assert reason(["demographic_popular"], ["Drama"], watched_title=None, **kw) == "popular among women 25-34"
    assert reason(["popular"], [], watched_title=None, **kw) == "popular with everyone"
    assert audience(None, None) == "viewers like you" and audience(56, "M") == "men 56+"


def test_distinctive_history_names_what_sets_a_candidate_apart() -> None:
    import numpy as np

    from serving.blend import distinctive_history

    # history slots (left-padded, H=4): [pad, 10, 20, 30]; every candidate attends mostly to 30
    attention = np.array([[0.0, 0.1, 0.1, 0.8],
                          [0.0, 0.5, 0.0, 0.5],
                          [0.0, 0.0, 0.3, 0.7]])
    out = distinctive_history(attention, [0, 1, 2], [10, 20, 30])
    assert out == {0: 30, 1: 10, 2: 20}
    assert distinctive_history(attention, [0], []) == {0: None}

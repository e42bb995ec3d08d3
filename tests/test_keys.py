"""The key layout: names, versions in names, value codecs."""

from __future__ import annotations

import pytest

from pipeline import keys as K


def test_names_carry_prefix_layout_and_batch_version() -> None:
    k = K.Keys("rs")
    assert k.current() == "rs:v1:current"
    assert k.user("v9.1", 42) == "rs:v1:b:v9.1:user:42"
    assert k.user_list("v9.1", "als", 7) == "rs:v1:b:v9.1:ulist:als:7"
    assert k.item_list("v9.1", "next", 3) == "rs:v1:b:v9.1:ilist:next:3"
    assert k.global_list("v9.1", K.list_popular("Sci-Fi")) == "rs:v1:b:v9.1:glist:popular:genre:Sci-Fi"
    assert k.online_history(5) == "rs:v1:online:hist:5"
    assert all(name.startswith(k.version_prefix("v9.1")) for name in
               (k.manifest("v9.1"), k.movie("v9.1", 1), k.user_seen("v9.1", 1), k.movie_ids("v9.1")))


def test_bad_names_refused() -> None:
    with pytest.raises(ValueError, match="unknown list name"):
        K.Keys().user_list("v", "magic", 1)
    with pytest.raises(ValueError, match="invalid key prefix"):
        K.Keys("a:b")


def test_codecs_round_trip() -> None:
    assert K.decode_scored(K.encode_scored([(3, 0.123456789), (1, 2.0)])) == [(3, 0.12346), (1, 2.0)]
    assert K.decode_history(K.encode_history([(1, 4.5, 978300760)])) == [(1, 4.5, 978300760)]
    assert K.decode_ids(K.encode_ids([5, 3, 5, 100000])) == {3, 5, 100000}
    assert len(K.encode_ids(range(10))) == 40
    assert K.decode_fields(K.encode_fields({"a": [1, "x"], "b": None})) == {"a": [1, "x"], "b": None}
    assert K.decode_scored(None) == [] and K.decode_history(b"") == [] and K.decode_ids(None) == set()


def test_demographic_list_names() -> None:
    assert K.list_demographic(25, "F") == "popular:demo:25:F"
    assert K.list_demographic(None, "M") == "popular:demo:any:M"
    assert K.list_demographic(18, None) == "popular:demo:18:any"


def test_stream_counters_are_summed_over_shards() -> None:
    raw = {K.stream_stat_field("applied", 0).encode(): b"3", K.stream_stat_field("applied", 5).encode(): b"4",
           K.stream_stat_field("malformed", 2): "1", b"unknown:1": b"9"}
    assert K.decode_stream_stats(raw) == {"applied": 7, "duplicate": 0, "malformed": 1, "consumed": 8}
    assert K.decode_stream_stats({}) == {"applied": 0, "duplicate": 0, "malformed": 0, "consumed": 0}
    with pytest.raises(ValueError, match="unknown"):
        K.stream_stat_field("skipped", 0)


def test_batch_version_of_a_published_version() -> None:
    assert K.batch_version_of("v20261202T042349402Z.17") == "v20261202T042349402Z"
    assert K.batch_version_of("v20261202T042349402Z") == "v20261202T042349402Z"
    assert K.batch_version_of("v1.beta") == "v1.beta"


def test_value_encoders_write_exactly_what_json_dumps_writes() -> None:
    """The hand-built encoders (the stream job's hot path) must not change a byte of the layout."""
    import json
    import math

    compact = {"separators": (",", ":")}
    floats = [0.0, -0.0, 0.1, 4.5, 1 / 3, 1e16, 1.5e-7, -2.25, 123456789.123, math.inf, -math.inf, math.nan]
    values = [*floats, 0, -7, 2 ** 63, True, False, None, "Drama", "Misérables \"q\"", [1, "x"], {"Drama": 0.25},
              ["Drama", "Sci-Fi"], {}, []]
    fields = {f"f{i}": v for i, v in enumerate(values)}
    assert K.encode_fields(fields) == {k: json.dumps(v, **compact) for k, v in fields.items()}
    history = [(m, r, 978300760 + m) for m, r in zip(range(1, 13), floats)] + [(5, 4, 1), (6, 3.5, 2)]
    assert K.encode_history(history) == json.dumps([[m, float(r), t] for m, r, t in history], **compact)
    assert K.encode_history([]) == "[]"

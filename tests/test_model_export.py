"""Train a tiny ranker on a real P1 build, export it, and check the export against its
documented signature and against the Keras model it came from (real TensorFlow)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from model.signature import SERVING_INPUTS, SERVING_OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.spark, pytest.mark.tf]


def _readme_table(header: str) -> dict[str, tuple[str, str]]:
    text = (ROOT / "model" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(rf"^\| `(\w+)` \| (\w+) \| (\[[^\]]*\]) \|", text.split(header, 1)[1], flags=re.M)
    return {name: (dtype, shape) for name, dtype, shape in rows}


def test_readme_documents_the_signature() -> None:
    documented = _readme_table("| input |")
    assert set(documented) >= set(SERVING_INPUTS)
    for name, (dtype, shape) in SERVING_INPUTS.items():
        assert documented[name] == (dtype, "[" + ", ".join(shape) + "]"), name
    outputs = _readme_table("| output |")
    for name, (dtype, shape) in SERVING_OUTPUTS.items():
        assert outputs[name] == (dtype, "[" + ", ".join(shape) + "]"), name


def test_training_summary(trained: dict) -> None:
    s = trained["summary"]
    assert s["split"] == "p1" and s["epochs_run"] == 2
    assert s["train_examples"] > s["val_examples"] > 0
    assert np.isfinite(s["best_epoch"]["val_loss"])
    assert (trained["run"] / "ranker.keras").exists() and (trained["run"] / "tensorboard").exists()
    assert not (trained["run"] / "backup").exists()  # a finished run leaves no resume state
    assert (trained["run"] / "checkpoints" / "best.weights.h5").exists()


def test_export_matches_signature_and_keras_model(trained: dict) -> None:
    import tensorflow as tf

    from model.data import user_context, load_users, candidate_features, interest_from_history
    from model.export import export, warmup_request
    from model.signature import as_tensors
    from model.train import load_run
    from pipeline.home import Home

    home = Home(trained["cfg"].home)
    first = export(home, trained["run"])
    second = export(home, trained["run"])
    assert int(second.name) == int(first.name) + 1  # integer versions, increasing
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    # one warm-up record per signature the export has (a first call of a signature builds its graph)
    from tensorflow_serving.apis import prediction_log_pb2
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request.model_spec.signature_name
               for r in tf.data.TFRecordDataset(str(first / "assets.extra" / "tf_serving_warmup_requests"))]
    assert sorted(records) == sorted(tf.saved_model.load(str(first)).signatures)
    assert (first / "assets" / "movie_id.txt").exists()

    loaded = tf.saved_model.load(str(first))
    fn = loaded.signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    assert set(inputs) == set(SERVING_INPUTS)
    for name, (dtype, shape) in SERVING_INPUTS.items():
        assert inputs[name].dtype.name == dtype and len(inputs[name].shape) == len(shape), name
    assert set(fn.structured_outputs) == set(SERVING_OUTPUTS)

    ranker, vocab, table, _ = load_run(trained["run"])
    request = warmup_request(vocab, table)
    served = fn(**as_tensors(request))
    # The same request encoded by the training-side functions and fed to the Keras model.
    import pandas as pd

    demo = load_users(pd.DataFrame({"user_id": [int(request["user_id"][0])], "gender": [None], "age_bucket": [None],
                                    "occupation": [None]}), vocab)
    hist = [[int(m) for m in request["hist_movie_ids"][0] if m]]
    user = user_context(request["user_id"], demo, vocab, hist, [[4.0] * len(hist[0])],
                        np.array([len(hist[0])]), np.array([4.0]))
    cand = vocab.movie.encode(request["movie_ids"])
    keras_inputs = {**user, **{k: np.asarray(v) for k, v in candidate_features(table, cand).items()}}
    keras_inputs["interest_genres"] = np.asarray(interest_from_history(table, user["hist_movie_idx"]))
    # The warm-up request carries its own raw movie features; use them for the candidate side.
    keras_inputs["cand_genres"] = request["movie_genres"]
    keras_inputs["cand_stats"] = request["movie_stats"] / np.array([10.0, 5.0, 5.0], np.float32)
    keras_inputs["cand_title_idx"] = np.zeros_like(keras_inputs["cand_title_idx"])
    keras_inputs["cand_decade_idx"] = vocab.decade.encode(np.full(cand.shape, 1990))
    direct = ranker(keras_inputs, training=False)
    for name in ("rating", "attention"):
        np.testing.assert_allclose(served[name].numpy(), np.asarray(direct[name]), rtol=1e-4, atol=1e-5)
    # score: the ranker's logit mixed with the sequence model's next-movie log-probability (model.sequence)
    from model import sequence as S
    from model.export import load_sequence

    from model.export import load_neighbours

    seq, mix = load_sequence(trained["run"])
    assert trained["summary"]["sequence"]["mix"] == mix and 0.0 <= mix <= 1.0
    logp = S.log_softmax(S.next_logits(seq, [np.asarray(user["hist_movie_idx"][0])[user["hist_movie_idx"][0] > 0]],
                                       vocab.history_len))
    # and the neighbour prior (the fixture forces its weight to 0.5), from the same H history movies
    prior, weight = load_neighbours(trained["run"])
    assert weight == trained["summary"]["sequence"]["neighbour_weight"] == 0.5
    z = prior.z(np.asarray(user["hist_movie_idx"]))
    want = S.mixed_logit(np.asarray(direct["score"]), np.take_along_axis(logp, cand.astype(np.int64), axis=1), mix,
                         vocab.movie.size, np.take_along_axis(z, cand.astype(np.int64), axis=1), weight)
    got = served["score"].numpy().astype(np.float64)
    np.testing.assert_allclose(np.log(got / (1 - got)), want, rtol=1e-3, atol=1e-3)
    assert served["score"].shape == (1, 100)
    # next_movies: the sequence model's head plus the prior over the catalogue, history excluded, best first;
    # log_prob is the sequence model's own
    nxt = loaded.signatures["next_movies"](hist_movie_ids=tf.constant(request["hist_movie_ids"]))
    ids, lp = nxt["movie_ids"].numpy()[0], nxt["log_prob"].numpy()[0]
    assert len(ids) == min(300, vocab.movie.size) and not set(ids) & set(hist[0])
    np.testing.assert_allclose(lp, logp[0, vocab.movie.encode(ids)], rtol=1e-4, atol=1e-4)
    key = logp[0, 1:] + S.recall_order_weight(mix, weight) * z[0, 1:]
    order = np.argsort(-key, kind="stable")
    expect = [m for m in np.asarray(vocab.movie.values)[order] if m not in set(hist[0])][:5]
    assert list(ids[:5]) == expect
    assert float(tf.reduce_min(served["rating"])) >= 0 and float(tf.reduce_max(served["rating"])) <= 5


def test_rank_ids_equals_serving_default_on_the_runs_batch_version(trained: dict, tmp_path: Path) -> None:
    """The precomputed candidate side: rank_ids (user inputs + movie ids) scores like serving_default fed
    the same batch version's movie features; an unknown movie is flagged, and the batch version is named."""
    import tensorflow as tf

    from model.baselines import _rows_of
    from model.evaluate import SignatureScorer, load_p1
    from model.export import export
    from model.signature import RANK_IDS_INPUTS, RANK_IDS_OUTPUTS, RANK_IDS_SIGNATURE, as_tensors
    from pipeline.home import Home

    cfg = trained["cfg"]
    loaded = tf.saved_model.load(str(export(Home(tmp_path), trained["run"])))
    fn = loaded.signatures[RANK_IDS_SIGNATURE]
    assert set(fn.structured_input_signature[1]) == set(RANK_IDS_INPUTS)
    assert set(fn.structured_outputs) == set(RANK_IDS_OUTPUTS)
    data = load_p1(cfg)
    scorer = SignatureScorer("export", loaded.signatures["serving_default"], data, cfg.samples.history_len,
                             cfg.features.title_max_tokens)
    users = _rows_of(data.visible)[:3]
    request = scorer.request(users)  # every catalogue movie, with this batch version's features
    full = loaded.signatures["serving_default"](**as_tensors(request))
    by_ids = fn(**{k: v for k, v in as_tensors(request).items() if k in RANK_IDS_INPUTS})
    known = by_ids["known"].numpy()
    assert known.shape == request["movie_ids"].shape and known.mean() > 0.5
    for name in ("score", "rating", "attention"):  # vocabulary movies; the others go to serving_default
        np.testing.assert_allclose(by_ids[name].numpy()[known], full[name].numpy()[known], rtol=1e-4, atol=1e-5)
    assert set(by_ids["batch_version"].numpy().astype(str)) == {trained["summary"]["batch_version"]}
    unknown = fn(**{**{k: v for k, v in as_tensors(scorer.request(users[:1])).items() if k in RANK_IDS_INPUTS},
                    "movie_ids": tf.constant([[10**9]], tf.int64)})
    assert not unknown["known"].numpy().any()


def test_recommend_is_next_movies_and_rank_ids_in_one_call(trained: dict, tmp_path: Path) -> None:
    """One Recommend's model call: next_movies' list, rank_ids' outputs for the sent candidates, and rank_ids'
    outputs for the next movies, each equal to the separate signature's (and the README documents it)."""
    import tensorflow as tf

    from model.baselines import _rows_of
    from model.evaluate import SignatureScorer, load_p1
    from model.export import export
    from model.signature import (RANK_IDS_INPUTS, RANK_IDS_SIGNATURE, RECOMMEND_OUTPUTS, RECOMMEND_SIGNATURE,
                                 as_tensors)
    from pipeline.home import Home

    cfg = trained["cfg"]
    loaded = tf.saved_model.load(str(export(Home(tmp_path), trained["run"])))
    one = loaded.signatures[RECOMMEND_SIGNATURE]
    assert set(one.structured_input_signature[1]) == set(RANK_IDS_INPUTS)
    assert set(one.structured_outputs) == set(RECOMMEND_OUTPUTS)
    section = (ROOT / "model" / "README.md").read_text(encoding="utf-8").split("| recommend output |", 1)[1]
    section = section.split("\n\n", 1)[0]
    assert all(f"`{name}`" in section for name in RECOMMEND_OUTPUTS), "model/README.md documents every output"
    data = load_p1(cfg)
    scorer = SignatureScorer("export", loaded.signatures["serving_default"], data, cfg.samples.history_len,
                             cfg.features.title_max_tokens)
    request = {k: v for k, v in as_tensors(scorer.request(_rows_of(data.visible)[:2])).items()
               if k in RANK_IDS_INPUTS}
    request["movie_ids"] = request["movie_ids"][:, :37]  # any candidate count
    nxt = loaded.signatures["next_movies"](hist_movie_ids=request["hist_movie_ids"])
    by_ids = loaded.signatures[RANK_IDS_SIGNATURE]
    on_next = by_ids(**{**request, "movie_ids": nxt["movie_ids"]})
    ids = nxt["movie_ids"].numpy()
    # candidates that hold some next movies (one of them twice, one more for the first user only) and, for the
    # second user, a candidate twice: each next movie is ranked once, on the candidates' row where it has one
    overlap = np.concatenate([request["movie_ids"].numpy(), ids[:, 3:9], ids[:, 5:6],
                              np.stack([ids[0, 11:12], request["movie_ids"].numpy()[1, :1]])], axis=1)
    for movie_ids in (request["movie_ids"], tf.constant(overlap)):
        got = one(**{**request, "movie_ids": movie_ids})
        np.testing.assert_array_equal(got["next_movie_ids"].numpy(), ids)
        np.testing.assert_allclose(got["next_log_prob"].numpy(), nxt["log_prob"].numpy(), rtol=1e-5, atol=1e-5)
        sent = by_ids(**{**request, "movie_ids": movie_ids})
        for name in ("score", "rating", "attention"):
            np.testing.assert_allclose(got[name].numpy(), sent[name].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got[f"next_{name}"].numpy(), on_next[name].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got["known"].numpy(), sent["known"].numpy())
    assert got["next_score"].shape == nxt["movie_ids"].shape  # static K: a batcher never mistakes it for N
    assert one.structured_outputs["next_score"].shape.as_list() == [None, nxt["movie_ids"].shape[1]]

"""The ranker's layers and model: shapes, masking, save/reload, the serving contract.

Tiny sizes on purpose (B=3, N=4, H=5): these run on two shared cores in well under a
minute. Row 1 of every batch is a brand-new user (user_idx 0, all-padding history).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import layers as L
from model.ranker import INPUT_NAMES, OUTPUT_NAMES, BlockConfig, VocabSizes, build_ranker, input_signature

# Keras' own save path calls np.array(variable) (numpy 2 deprecation, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

B, N, H, G, T = 3, 4, 5, 6, 4
SPEC = VocabSizes(n_users=10, n_movies=20, n_genres=G, n_ages=3, n_genders=2, n_occupations=4,
                  n_decades=3, n_title_tokens=15, history_len=H, title_len=T)
SMALL = BlockConfig(embedding_dim=8, hidden=12, residual_blocks=1, attention_heads=2)
HISTORY = np.array([[0, 0, 3, 4, 5], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]], dtype=np.int32)


def make_batch(b: int = B, n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hist = HISTORY[np.arange(b) % 3]
    batch = {
        "user_idx": rng.integers(1, 11, b), "age_idx": rng.integers(0, 4, b),
        "gender_idx": rng.integers(0, 3, b), "occupation_idx": rng.integers(0, 5, b),
        "user_stats": rng.random((b, 2)), "hist_movie_idx": hist,
        "hist_rating": np.where(hist > 0, rng.integers(1, 6, hist.shape) / 5.0, 0.0),
        "interest_genres": rng.random((b, G)) > 0.5,
        "cand_movie_idx": rng.integers(1, 21, (b, n)), "cand_genres": rng.random((b, n, G)) > 0.5,
        "cand_decade_idx": rng.integers(0, 4, (b, n)), "cand_title_idx": rng.integers(0, 16, (b, n, T)),
        "cand_stats": rng.random((b, n, 3)),
    }
    batch["user_idx"][1 % b] = 0
    specs = input_signature(SPEC)
    return {k: np.asarray(v).astype(specs[k].dtype.name) for k, v in batch.items()}


def as_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def assert_roundtrip(layer: keras.layers.Layer, inputs: list[np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    """Wrap ``layer`` in a functional model, save as .keras, reload, compare outputs."""
    symbolic = [keras.Input(shape=a.shape[1:], dtype=a.dtype.name) for a in inputs]
    out = layer(symbolic[0] if len(symbolic) == 1 else symbolic)
    single = len(inputs) == 1
    model = keras.Model(symbolic[0] if single else symbolic, out)
    before = as_list(model(inputs[0] if single else inputs))
    path = tmp_path / f"{layer.name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    after = as_list(reloaded(inputs[0] if single else inputs))
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    return before


# ---------------------------------------------------------------- layers

def test_padding_mask_and_id_dropout(tmp_path: Path) -> None:
    mask = L.PaddingMask()(HISTORY)
    np.testing.assert_array_equal(mask, (HISTORY > 0).astype(np.float32))
    ids = np.arange(1, 2001, dtype=np.int32)
    drop = L.IdDropout(0.5, seed=3)
    np.testing.assert_array_equal(drop(ids, training=False), ids)
    dropped = np.asarray(drop(ids, training=True))
    assert set(np.unique(dropped[dropped != ids])) == {0}
    assert 0.3 < np.mean(dropped == 0) < 0.7
    assert_roundtrip(L.IdDropout(0.2, seed=1), [ids.reshape(-1, 1)], tmp_path)
    with pytest.raises(ValueError):
        L.IdDropout(1.0)


def test_category_embedding_maps_unknown_to_row_zero(tmp_path: Path) -> None:
    layer = L.CategoryEmbedding(5, 3)
    out = np.asarray(layer(np.array([[0, 2, 6, -1]], dtype=np.int32)))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, 2], out[0, 0])  # out of range -> unknown row
    np.testing.assert_array_equal(out[0, 3], out[0, 0])
    assert_roundtrip(L.CategoryEmbedding(5, 3, name="cat"), [HISTORY], tmp_path)


def test_genre_conv_any_rank_and_empty(tmp_path: Path) -> None:
    layer = L.GenreConv(G, 4, 5)
    user = make_batch()["interest_genres"]
    cand = make_batch()["cand_genres"]
    assert layer(user).shape == (B, 10)
    assert layer(cand).shape == (B, N, 10)
    np.testing.assert_array_equal(layer(np.zeros((2, G), np.float32)), 0.0)
    assert_roundtrip(L.GenreConv(G, 4, 5, name="genres"), [cand], tmp_path)


def test_title_cnn_ignores_padding(tmp_path: Path) -> None:
    layer = L.TitleCNN(15, 4, 3, kernel_sizes=(2, 3))
    tokens = make_batch()["cand_title_idx"]
    assert layer(tokens).shape == (B, N, 6)
    padded = np.array([[3, 4, 0, 0]], np.int32)
    np.testing.assert_allclose(layer(padded), layer(padded[:, :2]), atol=1e-6)  # trailing pads change nothing
    np.testing.assert_array_equal(layer(np.zeros((1, 2, T), np.int32)), 0.0)
    assert_roundtrip(L.TitleCNN(15, 4, 3, name="title"), [tokens], tmp_path)


def history_items(seed: int = 0, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random items with garbage at padded positions (masking must hide it)."""
    items = np.random.default_rng(seed).normal(size=(B, H, d)).astype(np.float32)
    return items, (HISTORY > 0).astype(np.float32)


def test_history_embedding_zeroes_padding(tmp_path: Path) -> None:
    movies, pad = history_items()
    ratings = (HISTORY > 0).astype(np.float32) * 0.8
    out = assert_roundtrip(L.HistoryEmbedding(H, 8, name="hist_emb"), [movies, ratings, pad], tmp_path)[0]
    assert out.shape == (B, H, 8)
    np.testing.assert_array_equal(out[pad == 0], 0.0)
    assert np.all(np.abs(out[pad == 1]).sum(-1) > 0)


def test_history_self_attention_masks_keys(tmp_path: Path) -> None:
    items, pad = history_items()
    layer = L.HistorySelfAttention(2, 8)
    out = np.asarray(layer([items, pad]))
    noisy = items + 100.0 * (pad == 0)[..., None]  # change only padded positions
    np.testing.assert_allclose(layer([noisy, pad]), out, atol=1e-5)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[pad == 0], 0.0)  # incl. the all-padding row
    assert_roundtrip(L.HistorySelfAttention(2, 8, name="sa"), [items, pad], tmp_path)


def test_history_lstm_skips_left_padding(tmp_path: Path) -> None:
    items, pad = history_items()
    layer = L.HistoryLSTM(6)
    seq, final = (np.asarray(t) for t in layer([items, pad]))
    assert seq.shape == (B, H, 6) and final.shape == (B, 6)
    np.testing.assert_array_equal(final[1], 0.0)  # all padding
    np.testing.assert_array_equal(seq[pad == 0], 0.0)
    _, unpadded = layer([items[:1, 2:], pad[:1, 2:]])  # row 0 without its two pads
    np.testing.assert_allclose(final[0], np.asarray(unpadded)[0], atol=1e-5)
    assert_roundtrip(L.HistoryLSTM(6, name="lstm"), [items, pad], tmp_path)


def test_masked_mean_pool(tmp_path: Path) -> None:
    items, pad = history_items()
    out = assert_roundtrip(L.MaskedMeanPool(name="mean"), [items, pad], tmp_path)[0]
    np.testing.assert_allclose(out[0], items[0, 2:].mean(0), atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)


def test_target_attention_weights(tmp_path: Path) -> None:
    items, pad = history_items()
    cands = np.random.default_rng(1).normal(size=(B, N, 7)).astype(np.float32)
    attended, weights = assert_roundtrip(L.TargetAttention(8, name="ta"), [cands, items, pad], tmp_path)
    assert attended.shape == (B, N, 8) and weights.shape == (B, N, H) and weights.dtype == np.float32
    np.testing.assert_array_equal(weights[np.broadcast_to(pad[:, None, :] == 0, weights.shape)], 0.0)
    np.testing.assert_allclose(weights.sum(-1)[[0, 2]], 1.0, atol=1e-5)
    np.testing.assert_array_equal(weights[1], 0.0)  # all-padding history
    np.testing.assert_array_equal(attended[1], 0.0)


def test_zero_attention_and_broadcast(tmp_path: Path) -> None:
    batch = make_batch()
    zeros = assert_roundtrip(L.ZeroAttention(name="za"), [batch["cand_movie_idx"], HISTORY], tmp_path)[0]
    assert zeros.shape == (B, N, H) and not zeros.any()
    user = np.arange(B * 2, dtype=np.float32).reshape(B, 2)
    out = assert_roundtrip(L.BroadcastToCandidates(name="bc"), [user, batch["cand_stats"]], tmp_path)[0]
    assert out.shape == (B, N, 2)
    np.testing.assert_array_equal(out, np.repeat(user[:, None, :], N, axis=1))


def test_residual_block_and_heads(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(B, N, 6)).astype(np.float32) * 50
    out = assert_roundtrip(L.ResidualBlock(6, 0.1, name="res"), [x], tmp_path)[0]
    assert out.shape == (B, N, 6) and np.isfinite(out).all()
    rating = assert_roundtrip(L.SigmoidHead(5.0, name="rating"), [x], tmp_path)[0]
    assert rating.shape == (B, N) and rating.dtype == np.float32
    assert rating.min() >= 0.0 and rating.max() <= 5.0
    with pytest.raises(ValueError):
        L.ResidualBlock(5)(x)


def test_factorised_rating_is_the_prior_plus_a_weighted_correction(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    users = np.array([3, 0, 99], np.int32)                          # known, unknown, out of range
    movies = np.array([[1, 2, 0, 20], [4, 5, 6, 7], [1, 1, 300, 2]], np.int32)
    h = rng.normal(size=(B, N, 6)).astype(np.float32)
    ub, uf = rng.normal(size=11).astype(np.float32), rng.normal(size=(11, 3)).astype(np.float32)
    mb, mf = rng.normal(size=21).astype(np.float32), rng.normal(size=(21, 3)).astype(np.float32)
    ub[0], uf[0], mb[0], mf[0] = 0, 0, 0, 0                          # row 0 = unknown, as fit_rating_prior lays out
    layer = L.FactorisedRating(10, 20, 3, name="rating_prior")
    layer([users, movies, h])
    layer.set_prior(3.5, ub, uf, mb, mf)
    u = np.where(users <= 10, users, 0)
    m = np.where(movies <= 20, movies, 0)
    expected_prior = 3.5 + ub[u][:, None] + mb[m] + np.einsum("bf,bnf->bn", uf[u], mf[m])
    np.testing.assert_allclose(np.asarray(layer.prior(users, movies)), expected_prior, rtol=1e-5, atol=1e-5)
    delta = np.squeeze(np.asarray(layer.delta(h)), -1)
    full = assert_roundtrip(layer, [users, movies, h], tmp_path)[0]   # prior weights survive save / reload
    np.testing.assert_allclose(full, np.clip(expected_prior + delta, 0, 5), rtol=1e-5, atol=1e-5)
    layer.residual_weight.assign(0.0)
    np.testing.assert_allclose(np.asarray(layer([users, movies, h])), np.clip(expected_prior, 0, 5), rtol=1e-5, atol=1e-5)
    assert all(not w.trainable for w in layer.weights if "delta" not in w.path)


# ---------------------------------------------------------------- BlockConfig

def test_block_config_ablate_and_dict() -> None:
    cfg = BlockConfig().ablate(["lstm", "title_cnn"])
    assert not cfg.lstm and not cfg.title_cnn and cfg.attention
    assert BlockConfig.from_dict(cfg.to_dict()) == cfg
    assert set(BlockConfig.block_names()) == {
        "user_id", "demographics", "genre_conv", "movie_id", "decade", "title_cnn", "movie_stats",
        "attention", "lstm", "target_attention", "residual", "history", "rating_prior"}
    with pytest.raises(ValueError, match="bogus"):
        BlockConfig().ablate(["lstm", "bogus"])
    with pytest.raises(ValueError, match="nope"):
        BlockConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="candidate block"):
        BlockConfig().ablate(["genre_conv", "movie_id", "decade", "title_cnn", "movie_stats"])


# ---------------------------------------------------------------- the ranker

@pytest.fixture(scope="module")
def ranker() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_ranker(SPEC, SMALL)


def check_outputs(out: dict[str, Any], b: int, n: int) -> None:
    assert set(out) == set(OUTPUT_NAMES)
    score, rating, attention = (np.asarray(out[k]) for k in OUTPUT_NAMES)
    assert score.shape == (b, n) and rating.shape == (b, n) and attention.shape == (b, n, H)
    for value in (score, rating, attention):
        assert value.dtype == np.float32 and np.isfinite(value).all()
    assert (score > 0).all() and (score < 1).all()
    assert (rating >= 0).all() and (rating <= 5).all()
    assert (attention >= 0).all() and (attention <= 1).all()


@pytest.mark.parametrize("n", [1, 7])
def test_ranker_shapes_and_ranges(ranker: keras.Model, n: int) -> None:
    assert sorted(ranker.input) == sorted(INPUT_NAMES)
    batch = make_batch(2, n)
    out = ranker(batch)
    check_outputs(out, 2, n)
    attention = np.asarray(out["attention"])
    np.testing.assert_array_equal(attention[1], 0.0)        # new user: nothing to attend to
    np.testing.assert_allclose(attention[0].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(attention[0, :, :2], 0.0)  # its two padded positions


def test_ranker_save_reload(ranker: keras.Model, tmp_path: Path) -> None:
    batch = make_batch()
    ranker.save(tmp_path / "ranker.keras")
    reloaded = keras.models.load_model(tmp_path / "ranker.keras")
    for a, b in zip(as_list(ranker(batch)), as_list(reloaded(batch))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_ranker_traces_with_dynamic_batch_and_candidates(ranker: keras.Model) -> None:
    serve = tf.function(lambda inputs: ranker(inputs, training=False), input_signature=[input_signature(SPEC)])
    concrete = serve.get_concrete_function()
    assert concrete.structured_outputs["score"].shape.as_list() == [None, None]
    for b, n in ((B, N), (1, 500)):
        batch = make_batch(b, n)
        out = serve(batch)
        check_outputs(out, b, n)
        np.testing.assert_allclose(out["score"], ranker(batch)["score"], atol=1e-5)


def test_candidates_are_independent(ranker: keras.Model) -> None:
    """User tower once per row, then broadcast: permuting or splitting candidates changes nothing."""
    batch = make_batch(B, 6, seed=4)
    full = {k: np.asarray(v) for k, v in ranker(batch).items()}
    perm = np.random.default_rng(5).permutation(6)
    permuted = {k: (v[:, perm] if k.startswith("cand_") else v) for k, v in batch.items()}
    out = ranker(permuted)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(np.asarray(out[k]), full[k][:, perm], atol=1e-5)
    halves = [ranker({k: (v[:, s] if k.startswith("cand_") else v) for k, v in batch.items()})
              for s in (slice(0, 2), slice(2, 6))]
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(np.concatenate([np.asarray(h[k]) for h in halves], axis=1), full[k], atol=1e-5)


ABLATIONS = [[name] for name in BlockConfig.block_names()] + [["attention", "lstm"],
                                                              ["history", "user_id", "demographics"]]


@pytest.mark.parametrize("names", ABLATIONS, ids=["+".join(a) for a in ABLATIONS])
def test_every_ablation_builds(names: list[str]) -> None:
    blocks = SMALL.ablate(names)
    model = build_ranker(SPEC, blocks)
    assert sorted(model.input) == sorted(INPUT_NAMES)
    out = model(make_batch())
    check_outputs(out, B, N)
    if not (blocks.history and blocks.target_attention):
        assert not np.asarray(out["attention"]).any()


def test_mixed_precision_outputs_float32() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_ranker(SPEC, SMALL)
        check_outputs(model(make_batch()), B, N)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_reduces_loss() -> None:
    keras.utils.set_random_seed(1)
    model = build_ranker(SPEC, SMALL)
    batch = make_batch(8, N, seed=7)
    labels = {"score": (batch["cand_stats"][..., 0] > 0.5).astype(np.float32),
              "rating": 5.0 * batch["cand_stats"][..., 1]}
    model.compile(optimizer=keras.optimizers.Adam(0.02), jit_compile=False,
                  loss={"score": keras.losses.BinaryCrossentropy(), "rating": keras.losses.MeanSquaredError()})
    before = model.evaluate(batch, labels, verbose=0, return_dict=True)["loss"]
    model.fit(batch, labels, epochs=40, batch_size=8, verbose=0)
    after = model.evaluate(batch, labels, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(after) and after < 0.5 * before


def test_vocab_tables_are_never_shared_between_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TF names a file-backed table after its Asset's repr (which holds a memory address); two exports in one
    process whose Assets print alike must still each read their own file, whatever the key dtype."""
    from model.export import vocab_table

    monkeypatch.setattr(tf.saved_model.Asset, "__repr__", lambda self: "<Asset at a reused address>")
    (tmp_path / "ints.txt").write_text("30\n10\n20\n", encoding="utf-8")
    (tmp_path / "strs.txt").write_text("b\na\n", encoding="utf-8")
    (tmp_path / "ints2.txt").write_text("20\n30\n", encoding="utf-8")
    ints = vocab_table(tf.saved_model.Asset(str(tmp_path / "ints.txt")), tf.int64)
    strs = vocab_table(tf.saved_model.Asset(str(tmp_path / "strs.txt")), tf.string)
    ints2 = vocab_table(tf.saved_model.Asset(str(tmp_path / "ints2.txt")), tf.int64)
    assert ints.lookup(tf.constant([10, 20, 99], tf.int64)).numpy().tolist() == [1, 2, -1]
    assert strs.lookup(tf.constant(["a", "b"])).numpy().tolist() == [1, 0]
    assert ints2.lookup(tf.constant([10, 20, 30], tf.int64)).numpy().tolist() == [-1, 0, 1]


def test_the_split_ranker_equals_the_whole_one() -> None:
    """Candidate tower + the rest on its output = the ranker (what the exported rank_ids signature serves)."""
    from model.ranker import CANDIDATE_INPUTS, split_ranker

    ranker = build_ranker(SPEC, SMALL)
    batch = {k: tf.constant(v) for k, v in make_batch(seed=3).items()}
    tower, rest = split_ranker(ranker, SPEC, SMALL)
    whole = ranker(batch, training=False)
    cand_vec = tower({n: batch[n] for n in CANDIDATE_INPUTS}, training=False)
    on_vectors = rest({**{n: v for n, v in batch.items() if n not in CANDIDATE_INPUTS},
                       "cand_movie_idx": batch["cand_movie_idx"], "cand_vec": cand_vec}, training=False)
    for k in ("score", "rating", "attention"):
        np.testing.assert_allclose(on_vectors[k].numpy(), whole[k].numpy(), rtol=1e-5, atol=1e-6)
    assert "title_cnn" not in {layer.name for layer in rest.layers}


@pytest.mark.tf
def test_the_listwise_term_is_softmax_cross_entropy_of_the_rated_movie_over_its_list() -> None:
    """RankerTrainer.compute_losses by hand: BCE over every candidate + rating MSE on the rated one, plus
    ``listwise_weight`` x -log softmax(logit)[rated] when it is above 0."""
    from model.trainer import RankerTrainer

    score = np.array([[0.8, 0.5, 0.2]], np.float32)
    outputs = {"score": tf.constant(score), "rating": tf.constant([[4.0, 0.0, 0.0]])}
    labels = {"score": tf.constant([[1.0, 0.0, 0.0]]), "rating": tf.constant([[5.0, 0.0, 0.0]]),
              "rating_mask": tf.constant([[1.0, 0.0, 0.0]])}
    bce = -np.mean([np.log(0.8), np.log(0.5), np.log(0.8)])
    logit = np.log(score / (1 - score))[0]
    listwise = -(logit[0] - np.log(np.exp(logit).sum()))
    plain, b, mse = RankerTrainer(None, 1.0, 0.5).compute_losses(outputs, labels)
    assert float(b) == pytest.approx(bce, rel=1e-5) and float(mse) == pytest.approx(1.0)
    assert float(plain) == pytest.approx(bce + 0.5, rel=1e-5)
    both, _, _ = RankerTrainer(None, 1.0, 0.5, listwise_weight=2.0).compute_losses(outputs, labels)
    assert float(both) == pytest.approx(bce + 0.5 + 2.0 * listwise, rel=1e-5)

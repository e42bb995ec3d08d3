"""`recsys export`: a trained ranker -> a TensorFlow Serving model directory.

Layout (what TF Serving's file-system poller watches)::

    <home>/models/ranker/<version>/saved_model.pb, variables/, assets/*.txt,
                                   assets.extra/tf_serving_warmup_requests

``<version>`` is an increasing integer. The directory is written under a temp name
and renamed into place, so a poller never loads half an export. The graph maps raw
values to indices with lookup tables initialised from the vocabulary files in
``assets/`` (unknown -> 0), scales statistics, derives the user's genre profile from
the history (or takes declared interest genres when there is none), and calls the
Keras ranker; see ``model.signature`` for the inputs and outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from model.data import USER_COUNT_SCALE
from model.sequence import recall_order_weight
from model.signature import (NEXT_MOVIES_SIGNATURE, RANK_IDS_INPUTS, RANK_IDS_SIGNATURE, RECOMMEND_SIGNATURE,
                             SERVING_INPUTS,
                             SIGNATURE_NAME, MovieInputs, UserInput, build_request)
from pipeline.home import Home, model_versions

MODEL_NAME = "ranker"
NEXT_MOVIES_K = 300  # movies the next_movies signature returns per history


def model_base(home: Home, name: str = MODEL_NAME) -> Path:
    return home.models / name


def exported_versions(home: Home, name: str = MODEL_NAME) -> list[int]:
    """Complete versions exported under ``<home>/models/<name>/``, newest first (what a poller would serve)."""
    return sorted(model_versions(model_base(home, name)), reverse=True)


def next_version(base: Path) -> int:
    """One past every integer directory under ``base``, complete or not, so no export overwrites another."""
    return max(model_versions(base, complete_only=False), default=0) + 1


def _write_vocab_files(vocab: Any, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, enc in (("movie_id", vocab.movie), ("user_id", vocab.user), ("age_bucket", vocab.age),
                      ("gender", vocab.gender), ("occupation", vocab.occupation), ("decade", vocab.decade),
                      ("title_token", vocab.title_token), ("genre", vocab.genre)):
        path = folder / f"{name}.txt"
        path.write_text("".join(f"{v}\n" for v in enc.values), encoding="utf-8")
        files[name] = path
    return files


def vocab_table(asset: Any, key_dtype: Any) -> Any:
    """A lookup table from a vocabulary file (one value per line) to its line number, -1 when absent.

    Anonymous on purpose: a named table is shared process-wide under a name TF derives from the Asset's repr,
    which holds its memory address, so a later export whose Asset lands at a freed address would be handed the
    earlier table (the old vocabulary, or a key-dtype clash). Anonymous tables are never shared.
    """
    import tensorflow as tf

    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(asset, key_dtype, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                                      tf.lookup.TextFileIndex.LINE_NUMBER),
        default_value=-1, experimental_is_anonymous=True)


def candidate_table(tower: Any, table: Any, chunk: int = 4096) -> np.ndarray:
    """[M + 1, d] float32: the candidate tower's output for every vocabulary movie (row = movie index)."""
    import tensorflow as tf

    from model.data import candidate_features

    rows = []
    for start in range(0, len(table.genres), chunk):
        idx = tf.range(start, min(start + chunk, len(table.genres)), dtype=tf.int32)[None, :]
        rows.append(tf.cast(tower(candidate_features(table, idx), training=False), tf.float32).numpy()[0])
    return np.concatenate(rows, axis=0)


def build_module(ranker: Any, vocab: Any, table: Any, vocab_files: dict[str, Path], sequence: Any = None,
                 mix: float = 0.0, split: tuple[Any, Any] | None = None, batch_version: str = "",
                 neighbours: tuple[Any, float] | None = None) -> Any:
    """A tf.Module whose ``serve`` function is the serving signature.

    With a ``sequence`` model (``model.sequence``) the exported ``score`` mixes its next-movie log-probability
    into the ranker's logit with weight ``mix``, and ``next_movies`` (a second signature) returns its top movies
    over the whole catalogue for the gateway's recall.

    With ``neighbours`` (a ``model.neighbours.NeighbourPrior`` and its weight) the graph also computes the
    neighbour prior from the request's history and adds ``weight * z`` to the score's logit
    (``model.sequence.mixed_logit``); ``next_movies`` then orders by ``log p + (weight / mix) * z``
    (``model.sequence.recall_order_weight``) while its ``log_prob`` stays the sequence model's.

    With ``split`` (``model.ranker.split_ranker``: the candidate tower and the rest of the ranker) the module
    also has ``rank_ids``: the same scores from candidate ids alone, the tower's outputs precomputed here for
    every vocabulary movie with the run's movie features (those of ``batch_version``) and gathered in the graph.
    """
    import tensorflow as tf

    H, T, G = vocab.history_len, vocab.title_len, vocab.genre.size
    int_keys = {"movie_id", "user_id", "age_bucket", "decade"}
    top_k = min(NEXT_MOVIES_K, vocab.movie.size)

    class ServingModule(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ranker = ranker
            self.vocab_assets = {n: tf.saved_model.Asset(str(p)) for n, p in vocab_files.items() if n != "genre"}
            self.genre_asset = tf.saved_model.Asset(str(vocab_files["genre"]))  # documents the genre order
            self.tables = {n: vocab_table(a, tf.int64 if n in int_keys else tf.string)
                           for n, a in self.vocab_assets.items()}
            self.movie_genres_by_idx = tf.constant(table.genres)
            self.sequence = sequence
            self.mix = float(mix)
            self.movie_ids_by_idx = tf.constant(np.array([0] + [int(m) for m in vocab.movie.values], np.int64))
            prior, weight = neighbours if neighbours is not None else (None, 0.0)
            self.prior_weight = float(weight) if prior is not None else 0.0
            if self.prior_weight > 0:
                # variables, not constants: a 5,000-movie EASE table is 100 MB, which a constant would put
                # inside the GraphDef (2 GiB at most, parsed whole at load); variables are stored beside it
                self.prior_slot_of = tf.Variable(prior.slot_of, trainable=False, name="prior_slot_of")
                self.prior_ease = tf.Variable(prior.ease, trainable=False, name="prior_ease")
                self.prior_succ_idx = tf.Variable(prior.succ_idx, trainable=False, name="prior_succ_idx")
                self.prior_succ_p = tf.Variable(prior.succ_p * np.float32(prior.beta), trainable=False,
                                                name="prior_succ_p")
                self.prior_size = prior.size
            if split is not None:
                self.rest = split[1]
                self.cand_table = tf.Variable(candidate_table(split[0], table), trainable=False, name="cand_table")
                self.batch_version = tf.constant(batch_version)

        def _next_logp(self, hist_idx: Any) -> Any:
            """[B, M + 1] log-probabilities of the next movie (column 0, padding, at -1e9)."""
            logits = self.sequence.last_logits(hist_idx, training=False)
            pad = tf.one_hot(tf.zeros_like(hist_idx[:, 0]), tf.shape(logits)[1], on_value=-1e9, off_value=0.0)
            return tf.nn.log_softmax(tf.cast(logits, tf.float32) + pad, axis=-1)

        def _prior_slots(self, hist_idx: Any) -> Any:
            """[B, P + 1] the standardised neighbour prior over its slots (``NeighbourPrior.z``; slot P = 0)."""
            slots = tf.gather(self.prior_slot_of, hist_idx)
            s = tf.reduce_sum(tf.gather(self.prior_ease, slots), axis=1)
            last = slots[:, -1]
            succ = tf.gather(self.prior_succ_idx, last)
            rows = tf.broadcast_to(tf.range(tf.shape(succ)[0])[:, None], tf.shape(succ))
            s = tf.tensor_scatter_nd_add(s, tf.stack([rows, succ], axis=-1), tf.gather(self.prior_succ_p, last))
            body = s[:, :self.prior_size]
            mean, var = tf.nn.moments(body, axes=[1], keepdims=True)
            z = (body - mean) / (tf.sqrt(var) + 1e-6)
            return tf.concat([z, tf.zeros_like(z[:, :1])], axis=1)

        def _prior_of(self, slots: Any, cand: Any) -> Any:
            """[B, N] the prior of each candidate (vocabulary indices; 0 outside the prior) from ``_prior_slots``."""
            return tf.gather(slots, tf.gather(self.prior_slot_of, cand), batch_dims=1)

        def _top_next(self, hist_idx: Any, logp: Any, slots: Any) -> Any:
            """The ``top_k`` next movies (vocabulary indices) over the catalogue, history excluded: by the sequence
            model's log-probability, plus the neighbour prior with the score's relative weight when there is one."""
            key = logp
            if self.prior_weight > 0:
                ratio = recall_order_weight(self.mix, self.prior_weight)
                key = logp + ratio * tf.gather(slots, self.prior_slot_of, axis=1)
            seen = tf.reduce_min(tf.one_hot(hist_idx, tf.shape(logp)[1], on_value=-1e9, off_value=0.0), axis=1)
            return tf.math.top_k(key + seen, k=top_k)

        def _idx(self, name: str, values: Any) -> Any:
            return tf.cast(self.tables[name].lookup(values) + 1, tf.int32)

        specs = [tf.TensorSpec([None] + [{"H": H, "T": T, "G": G, "3": 3}.get(d) for d in shape[1:]],
                               tf.string if dtype == "string" else getattr(tf, dtype), name=name)
                 for name, (dtype, shape) in SERVING_INPUTS.items()]

        def _user_inputs(self, user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,  # noqa: ANN001
                         hist_movie_ids, hist_ratings, interest_genres) -> dict[str, Any]:
            """The user side of the ranker's inputs (shared by serve and rank_ids)."""
            hist_idx = self._idx("movie_id", hist_movie_ids)
            valid = tf.cast(hist_idx > 0, tf.float32)[..., None]
            g = tf.gather(self.movie_genres_by_idx, hist_idx)
            from_history = tf.reduce_sum(g * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
            has_history = tf.reduce_any(hist_idx > 0, axis=1, keepdims=True)
            return {
                "user_idx": self._idx("user_id", user_id),
                "age_idx": self._idx("age_bucket", age_bucket),
                "gender_idx": self._idx("gender", gender),
                "occupation_idx": self._idx("occupation", occupation),
                "user_stats": tf.stack([tf.math.log1p(user_n_ratings) / USER_COUNT_SCALE, user_mean_rating / 5.0], axis=1),
                "hist_movie_idx": hist_idx,
                "hist_rating": hist_ratings / 5.0,
                "interest_genres": tf.where(has_history, from_history, interest_genres),
            }

        def _outputs(self, out: dict[str, Any], cand: Any, hist_idx: Any, logp: Any = None,
                     slots: Any = None) -> dict[str, Any]:
            """score / rating / attention as float32, the sequence model mixed into the score.

            ``logp`` (``_next_logp``) and ``slots`` (``_prior_slots``) of this history when the caller has them
            already (``recommend`` computes them once for its next movies and their scores)."""
            result = {k: tf.cast(out[k], tf.float32) for k in ("score", "rating", "attention")}
            with_sequence = self.sequence is not None and self.mix > 0
            if with_sequence or self.prior_weight > 0:
                p = tf.clip_by_value(result["score"], 1e-7, 1.0 - 1e-7)
                z = (1.0 - (self.mix if with_sequence else 0.0)) * tf.math.log(p / (1.0 - p))
                if with_sequence:
                    logp = tf.gather(self._next_logp(hist_idx) if logp is None else logp, cand, batch_dims=1)
                    n = float(vocab.movie.size)
                    centred = tf.where(cand > 0, logp + tf.math.log(n), tf.zeros_like(logp))  # new movie: ranker only
                    z += self.mix * centred
                if self.prior_weight > 0:
                    z += self.prior_weight * self._prior_of(self._prior_slots(hist_idx) if slots is None else slots,
                                                            cand)
                result["score"] = tf.sigmoid(z)
            return result

        @tf.function(input_signature=specs)
        def serve(self, user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,  # noqa: ANN001
                  hist_movie_ids, hist_ratings, interest_genres, movie_ids, movie_genres, movie_year,
                  movie_title_tokens, movie_stats):  # noqa: ANN202
            user = self._user_inputs(user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,
                                     hist_movie_ids, hist_ratings, interest_genres)
            decade = tf.where(movie_year > 0, (movie_year // 10) * 10, tf.zeros_like(movie_year) - 1)
            inputs = {
                **user,
                "cand_movie_idx": self._idx("movie_id", movie_ids),
                "cand_genres": movie_genres,
                "cand_decade_idx": self._idx("decade", decade),
                "cand_title_idx": self._idx("title_token", movie_title_tokens),
                "cand_stats": movie_stats / tf.constant([10.0, 5.0, 5.0]),
            }
            out = self.ranker(inputs, training=False)
            return self._outputs(out, inputs["cand_movie_idx"], user["hist_movie_idx"])

        if split is not None:
            id_specs = [s for s in specs if s.name in RANK_IDS_INPUTS]

            @tf.function(input_signature=id_specs)
            def rank_ids(self, user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,  # noqa: ANN001
                         hist_movie_ids, hist_ratings, interest_genres, movie_ids):  # noqa: ANN202
                """serve's scores from candidate ids alone: their tower outputs come from ``cand_table``."""
                user = self._user_inputs(user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,
                                         hist_movie_ids, hist_ratings, interest_genres)
                cand = self._idx("movie_id", movie_ids)
                out = self.rest({**user, "cand_movie_idx": cand, "cand_vec": tf.gather(self.cand_table, cand)},
                                training=False)
                result = self._outputs(out, cand, user["hist_movie_idx"])
                result["known"] = cand > 0
                result["batch_version"] = tf.fill(tf.shape(user_id), self.batch_version)
                return result

        if sequence is not None:
            @tf.function(input_signature=[tf.TensorSpec([None, H], tf.int64, name="hist_movie_ids")])
            def next_movies(self, hist_movie_ids):  # noqa: ANN001, ANN202
                """The sequence model's top movies over the catalogue (history excluded), best first: by its
                log-probability, plus the neighbour prior with the score's relative weight when there is one.

                Every input has the batch dimension first (no scalar ``k``), so TF Serving's batcher and the
                embedded one can merge concurrent calls; callers keep the head they need.
                """
                hist_idx = self._idx("movie_id", hist_movie_ids)
                logp = self._next_logp(hist_idx)
                top = self._top_next(hist_idx, logp, self._prior_slots(hist_idx) if self.prior_weight > 0 else None)
                return {"movie_ids": tf.gather(self.movie_ids_by_idx, top.indices),
                        "log_prob": tf.gather(logp, top.indices, batch_dims=1)}

        if sequence is not None and split is not None:
            @tf.function(input_signature=id_specs)
            def recommend(self, user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,  # noqa: ANN001
                          hist_movie_ids, hist_ratings, interest_genres, movie_ids):  # noqa: ANN202
                """``rank_ids`` of the recall candidates and ``next_movies`` with their ``rank_ids`` scores, in one
                call: the sequence model, the neighbour prior and the user side of the ranker run once.

                A Recommend needs both (the next movies join the recall candidates, then everything is ranked);
                as two calls it paid the per-user work twice plus a round trip. The next movies are ranked in
                the same batch as the candidates, each movie once (``_rows_of_next``): a row's outputs depend
                on the user and that movie alone, so a next movie already among the candidates takes their row.
                """
                user = self._user_inputs(user_id, age_bucket, gender, occupation, user_n_ratings, user_mean_rating,
                                         hist_movie_ids, hist_ratings, interest_genres)
                hist_idx = user["hist_movie_idx"]
                logp = self._next_logp(hist_idx)
                slots = self._prior_slots(hist_idx) if self.prior_weight > 0 else None
                top = self._top_next(hist_idx, logp, slots)
                cand = self._idx("movie_id", movie_ids)
                n = tf.shape(cand)[1]
                extra, rows = self._rows_of_next(cand, tf.cast(top.indices, tf.int32))
                both = tf.concat([cand, extra], axis=1)
                out = self.rest({**user, "cand_movie_idx": both, "cand_vec": tf.gather(self.cand_table, both)},
                                training=False)
                ranked = self._outputs(out, both, hist_idx, logp, slots)
                result = {k: v[:, :n] for k, v in ranked.items()}
                result["known"] = cand > 0
                result["batch_version"] = tf.fill(tf.shape(user_id), self.batch_version)
                for k, v in ranked.items():  # static K: a batcher pads and slices only the candidates' N
                    result[f"next_{k}"] = tf.ensure_shape(tf.gather(v, rows, batch_dims=1),
                                                          [None, top_k] + v.shape[2:].as_list())
                result["next_movie_ids"] = tf.gather(self.movie_ids_by_idx, top.indices)
                result["next_log_prob"] = tf.gather(logp, top.indices, batch_dims=1)
                return result

        def _rows_of_next(self, cand: Any, nxt: Any) -> tuple[Any, Any]:
            """(extra [B, C], rows [B, K]): the next movies ``nxt`` not among the candidates ``cand`` (vocabulary
            indices, in their order, C the most any batch row has; a shorter row is padded with its own next
            movies, scored and unused), and where each next movie's row lies in ``concat([cand, extra])``.

            On the bench home most of the 300 next movies are candidates already: 527 rows a call instead of 699.
            """
            b, n = tf.shape(cand)[0], tf.shape(cand)[1]
            batch_row = tf.broadcast_to(tf.range(b)[:, None], tf.shape(cand))
            # first position of each candidate movie (index 0, unknown or padding, is never a next movie)
            first = tf.tensor_scatter_nd_min(tf.fill([b, vocab.movie.size + 1], tf.int32.max),
                                             tf.stack([batch_row, cand], axis=-1),
                                             tf.broadcast_to(tf.range(n)[None, :], tf.shape(cand)))
            at = tf.gather(first, nxt, batch_dims=1)
            new = at == tf.int32.max
            is_new = tf.cast(new, tf.int32)
            order = tf.argsort(1 - is_new, axis=1, stable=True)  # the new ones first, in order
            extra = tf.gather(nxt, order[:, :tf.reduce_max(tf.reduce_sum(is_new, axis=1))], batch_dims=1)
            rows = tf.where(new, n + tf.cumsum(is_new, axis=1) - 1, at)
            return extra, rows

    return ServingModule()


def load_sequence(run_dir: Path) -> tuple[Any, float] | None:
    """(sequence model, mix) of a run trained with one, else None."""
    from model import sequence as S

    loaded = S.load(Path(run_dir))
    return (loaded[0], float(loaded[1].get("mix", 0.0))) if loaded else None


def load_neighbours(run_dir: Path) -> tuple[Any, float] | None:
    """(neighbour prior, its weight) of a run that chose a weight above 0, else None."""
    import json

    from model import neighbours as N
    from model import sequence as S

    prior = N.load(Path(run_dir))
    spec = Path(run_dir) / S.SPEC_FILE
    if prior is None or not spec.exists():  # the weight lives beside the sequence model: none, no prior
        return None
    weight = float(json.loads(spec.read_text()).get("neighbour_weight", 0.0))
    return (prior, weight) if weight > 0 else None


def warmup_request(vocab: Any, table: Any) -> dict[str, np.ndarray]:
    """A realistic request (one known user, 100 candidates) for TF Serving's warm-up."""
    movies = list(vocab.movie.values[:100])
    user = UserInput(user_id=int(vocab.user.values[0]) if vocab.user.values else 0,
                     history=[(m, 4.0) for m in movies[:vocab.history_len]])
    cand = MovieInputs(movie_ids=movies, genres=[[] for _ in movies], years=[1995] * len(movies),
                       title_tokens=[[] for _ in movies], popularity=[5.0] * len(movies),
                       mean_rating=[3.5] * len(movies), bayes_rating=[3.5] * len(movies))
    return build_request(user, cand, vocab.history_len, vocab.title_len)


def write_warmup(path: Path, request: dict[str, np.ndarray], model_name: str,
                 signatures: tuple[str, ...] = (SIGNATURE_NAME,)) -> None:
    """assets.extra/tf_serving_warmup_requests: PredictionLog records in a TFRecord file, one per signature.

    Every signature the gateway calls gets one (``request`` holds the inputs of all of them): the first call of
    a signature builds and optimises its graph (~1.5 s on two cores), which otherwise lands on a live request
    and overruns its model timeout.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    inputs = {SIGNATURE_NAME: list(SERVING_INPUTS), RANK_IDS_SIGNATURE: list(RANK_IDS_INPUTS),
              RECOMMEND_SIGNATURE: list(RANK_IDS_INPUTS), NEXT_MOVIES_SIGNATURE: ["hist_movie_ids"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in signatures:
            req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                            signature_name=signature))
            for name in inputs[signature]:
                value = request[name]
                req.inputs[name].CopyFrom(tf.make_tensor_proto(
                    value.astype(bytes) if SERVING_INPUTS[name][0] == "string" else value))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())


def export(home: Home, run_dir: Path, model_name: str = MODEL_NAME) -> Path:
    """Export the run's ranker as the next version under ``<home>/models/<model_name>/``."""
    import tensorflow as tf

    from model.ranker import BlockConfig, VocabSizes, split_ranker
    from model.runs import load_run

    ranker, vocab, table, summary = load_run(run_dir)
    base = model_base(home, model_name)
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
    try:
        vocab_dir = Path(tempfile.mkdtemp(prefix=".vocab-", dir=base))
        files = _write_vocab_files(vocab, vocab_dir)
        seq = load_sequence(run_dir)
        split = split_ranker(ranker, VocabSizes.of(vocab), BlockConfig.from_dict(summary["blocks"]))
        module = build_module(ranker, vocab, table, files, *(seq or (None, 0.0)), split=split,
                              batch_version=str(summary.get("batch_version", "")),
                              neighbours=load_neighbours(run_dir))
        signatures = {SIGNATURE_NAME: module.serve, RANK_IDS_SIGNATURE: module.rank_ids}
        if seq is not None:  # split is always given here, so recommend exists beside next_movies
            signatures[NEXT_MOVIES_SIGNATURE] = module.next_movies
            signatures[RECOMMEND_SIGNATURE] = module.recommend
        tf.saved_model.save(module, str(staging), signatures=signatures)
        write_warmup(staging / "assets.extra" / "tf_serving_warmup_requests", warmup_request(vocab, table), model_name,
                     tuple(signatures))
        (staging / "assets.extra" / "run.txt").write_text(f"{summary['run']}\n{summary['batch_version']}\n")
        final = base / str(version)
        os.rename(staging, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(vocab_dir, ignore_errors=True)

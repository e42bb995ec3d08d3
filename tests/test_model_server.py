"""The embedded TF-Serving-protocol model server (the serving/model_server package), end to end.

Real TensorFlow, real gRPC over loopback, the tiny ranker of the shared ``exported_model``
fixture. Every server here gets its own copy of the model base path, so adding or
removing versions never touches the fixture other tests share.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.tf]

MODEL = "ranker"


# --------------------------------------------------------------------------- helpers


def copy_base(exported: Path, dest: Path) -> Path:
    """A private model base path holding version 1 of the exported ranker."""
    base = dest / MODEL
    base.mkdir(parents=True)
    shutil.copytree(exported / "1", base / "1")
    return base


def add_version(base: Path, version: int, source: int = 1) -> None:
    """What an export does: write under a dot-name, rename into place."""
    tmp = base / f".tmp-{version}"
    shutil.copytree(base / str(source), tmp)
    os.rename(tmp, base / str(version))


def make_request(base: Path, n: int, seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    from model.signature import MovieInputs, UserInput, build_request, concat_requests
    from pipeline.schemas import GENRES

    ids = [int(x) for x in (base / "1" / "assets" / "movie_id.txt").read_text().split()]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        movies = [int(m) for m in rng.choice(ids, n)] + [999_999]  # one unknown movie
        hist = [(int(m), float(rng.integers(1, 6))) for m in rng.choice(ids, int(rng.integers(0, 40)))]
        user = UserInput(user_id=int(rng.integers(1, 300)), age_bucket=25, gender="F", occupation="writer",
                         history=hist, interest_genres=["Comedy"])
        k = len(movies)
        cand = MovieInputs(movie_ids=movies, genres=[[GENRES[i % len(GENRES)]] for i in range(k)],
                           years=[1980 + i % 30 for i in range(k)], title_tokens=[["the", f"t{i}"] for i in range(k)],
                           popularity=rng.random(k) * 8, mean_rating=rng.random(k) * 5, bayes_rating=rng.random(k) * 5)
        rows.append(build_request(user, cand, history_len=30, title_len=8))
    return concat_requests(rows)


def predict_request(inputs: dict[str, np.ndarray], **spec: object):  # noqa: ANN201
    from tensorflow_serving.apis import model_pb2, predict_pb2

    from serving.tensors import to_tensor_proto

    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=spec.pop("name", MODEL)))
    if "version" in spec:
        req.model_spec.version.value = int(spec.pop("version"))  # type: ignore[arg-type]
    for k, v in spec.items():
        setattr(req.model_spec, k, v)
    for name, value in inputs.items():
        req.inputs[name].CopyFrom(to_tensor_proto(value))
    return req


def outputs(resp) -> dict[str, np.ndarray]:  # noqa: ANN001
    from serving.tensors import from_tensor_proto

    return {k: from_tensor_proto(v) for k, v in resp.outputs.items()}


@functools.lru_cache(maxsize=4)
def _signature(path: str):  # noqa: ANN202
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"]


def direct(base: Path, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The SavedModel called in-process, no server."""
    from model.signature import as_tensors

    fn = _signature(str(base / str(version)))
    return {k: v.numpy() for k, v in fn(**as_tensors(inputs)).items()}


def stubs(port: int):  # noqa: ANN201
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel), \
        model_service_pb2_grpc.ModelServiceStub(channel)


def status_of(model_stub, name: str = MODEL) -> dict[int, str]:  # noqa: ANN001
    from tensorflow_serving.apis import get_model_status_pb2, model_pb2

    resp = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name)))
    state = get_model_status_pb2.ModelVersionStatus.State
    return {s.version: state.Name(s.state) for s in resp.model_version_status}


def wait_for(predicate, what: str, timeout: float = 90.0) -> None:  # noqa: ANN001
    """Poll until true; the timeout only keeps a broken server from hanging the suite."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base1(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_base(exported_model, tmp_path_factory.mktemp("ms-base"))


@pytest.fixture(scope="module")
def server(base1: Path) -> Iterator:  # noqa: ANN201
    from serving.model_server import ModelServer

    srv = ModelServer(base1, MODEL, poll_seconds=0.2, max_batch=8, batch_timeout_ms=200.0)
    port = srv.start(0)
    channel, predict, model = stubs(port)
    yield srv, predict, model
    channel.close()
    srv.stop()


# --------------------------------------------------------------------------- tensors


def test_tensor_protos_round_trip_and_match_tensorflow() -> None:
    import tensorflow as tf

    from serving.tensors import from_tensor_proto, to_tensor_proto

    arrays = [np.arange(12, dtype=np.float32).reshape(2, 3, 2), np.array([[1, -2]], np.int64),
              np.array([3], np.int32), np.array([True, False]), np.zeros((1, 0, 3), np.float32),
              np.array(["F", "", "é"], object), np.array([[b"a", b"bc"]], object), np.array(["x", "y"])]
    for a in arrays:
        proto = to_tensor_proto(a)
        ours, theirs = from_tensor_proto(proto), tf.make_ndarray(proto)
        assert ours.shape == theirs.shape == a.shape
        assert ours.tolist() == theirs.tolist()
    assert from_tensor_proto(to_tensor_proto(np.array(["é"], object))).tolist() == ["é".encode()]
    # typed *_val fields written by other clients, with TensorFlow's fill-with-last rule
    for proto in (tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32), tf.make_tensor_proto(7, shape=[2, 2], dtype=tf.int64),
                  tf.make_tensor_proto([b"a", b"b"], dtype=tf.string)):
        assert from_tensor_proto(proto).tolist() == tf.make_ndarray(proto).tolist()
    bad = to_tensor_proto(np.zeros((2, 2), np.float32))
    bad.tensor_shape.dim[0].size = 3
    with pytest.raises(ValueError):
        from_tensor_proto(bad)


# --------------------------------------------------------------------------- protocol


def test_predict_equals_the_saved_model(server, base1: Path) -> None:  # noqa: ANN001
    srv, predict, _ = server
    for n, seed in ((7, 1), (60, 2)):
        inputs = make_request(base1, n, seed)
        resp = predict.Predict(predict_request(inputs))
        assert resp.model_spec.name == MODEL and resp.model_spec.version.value == 1
        assert resp.model_spec.signature_name == "serving_default"
        got, want = outputs(resp), direct(base1, 1, inputs)
        assert set(got) == set(want) == {"score", "rating", "attention"}
        for k in want:
            assert got[k].shape == want[k].shape and got[k].dtype == np.float32
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # explicit version, B = 2 (runs alone), output_filter
    inputs = make_request(base1, 9, 3, batch=2)
    resp = predict.Predict(predict_request(inputs, version=1, signature_name="serving_default"))
    np.testing.assert_allclose(outputs(resp)["rating"], direct(base1, 1, inputs)["rating"], rtol=1e-5, atol=1e-6)
    req = predict_request(inputs)
    req.output_filter.append("score")
    assert set(predict.Predict(req).outputs) == {"score"}


def test_metadata_status_health_reflection(server, base1: Path) -> None:  # noqa: ANN001
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

    from model.signature import SERVING_INPUTS, SERVING_OUTPUTS

    srv, predict, model = server
    resp = predict.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=["signature_def"]))
    assert resp.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    sd = sig_map.signature_def["serving_default"]
    assert set(sd.inputs) == set(SERVING_INPUTS) and set(sd.outputs) == set(SERVING_OUTPUTS)
    saved = saved_model_pb2.SavedModel.FromString((base1 / "1" / "saved_model.pb").read_bytes())
    assert sd == saved.meta_graphs[0].signature_def["serving_default"]

    with pytest.raises(grpc.RpcError) as err:
        predict.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name=MODEL)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert status_of(model) == {1: "AVAILABLE"}
    for name, version in (("nope", None), (MODEL, 42)):
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        with pytest.raises(grpc.RpcError) as err:
            model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        got = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert got == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "grpc.health.v1.Health"} <= names
    channel.close()


def huge_proto():  # noqa: ANN201
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1),
                                                   tensor_shape_pb2.TensorShapeProto.Dim(size=2**31)])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, tensor_shape=shape, int64_val=[1])


def test_bad_requests_get_tf_serving_status_codes(server, base1: Path) -> None:  # noqa: ANN001
    from serving.tensors import to_tensor_proto

    _, predict, _ = server
    good = make_request(base1, 5, 4)

    def call(req) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(req)
        return err.value.code(), err.value.details()

    code, details = call(predict_request(good, name="other"))
    assert code == grpc.StatusCode.NOT_FOUND and "other" in details
    code, details = call(predict_request(good, version=99))
    assert code == grpc.StatusCode.NOT_FOUND and "99" in details
    code, details = call(predict_request(good, version_label="stable"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "stable" in details
    code, details = call(predict_request(good, signature_name="nope"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "nope" in details

    cases = {
        "missing": lambda r: r.inputs.pop("movie_year"),
        "unknown": lambda r: r.inputs["colour"].CopyFrom(to_tensor_proto(np.array([1], np.int64))),
        "dtype": lambda r: r.inputs["user_id"].CopyFrom(to_tensor_proto(np.array([1.0], np.float32))),
        "shape": lambda r: r.inputs["hist_ratings"].CopyFrom(to_tensor_proto(np.zeros((1, 4), np.float32))),
        "rank": lambda r: r.inputs["movie_ids"].CopyFrom(to_tensor_proto(np.zeros((6,), np.int64))),
        "batch": lambda r: r.inputs["gender"].CopyFrom(to_tensor_proto(np.array(["F", "M"], object))),
        "filter": lambda r: r.output_filter.append("logits"),
        # 40 bytes declaring [1, 2**31]: refused from the declared size, before anything is allocated
        "huge": lambda r: r.inputs["movie_ids"].CopyFrom(huge_proto()),
    }
    named = {"missing": "movie_year", "unknown": "colour", "dtype": "user_id", "shape": "hist_ratings",
             "rank": "movie_ids", "batch": "gender", "filter": "logits", "huge": "2147483648 elements"}
    for case, mutate in cases.items():
        req = predict_request(good)
        mutate(req)
        code, details = call(req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, code, details)
        assert named[case] in details, (case, details)
    assert predict.Predict(predict_request(good)).model_spec.version.value == 1  # still serving


def test_a_call_beyond_the_bound_is_refused_at_once(base1: Path) -> None:
    """``max_in_flight``: with one call computing, the next is answered RESOURCE_EXHAUSTED without waiting (the
    gateway's breaker counts it); once the first is done, calls are admitted again."""
    from serving.model_server import ModelServer

    srv = ModelServer(base1, MODEL, poll_seconds=60, max_batch=1, max_in_flight=1)
    port = srv.start(0)
    channel, predict, _ = stubs(port)
    servable = srv._servables[1]
    entered, release = threading.Event(), threading.Event()
    run = servable.run

    def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        entered.set()
        release.wait(30)
        return run(*args, **kwargs)

    servable.run = held  # type: ignore[method-assign]
    try:
        req = predict_request(make_request(base1, 5, 100))
        first = predict.Predict.future(req, timeout=30)
        assert entered.wait(30)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - t0 < 10
        release.set()
        assert "score" in first.result().outputs
        servable.run = run  # type: ignore[method-assign]
        assert "score" in predict.Predict(req, timeout=30).outputs
    finally:
        release.set()
        channel.close()
        srv.stop()


def test_concurrent_batched_answers_equal_sequential(server, base1: Path) -> None:  # noqa: ANN001
    srv, predict, _ = server
    requests = [make_request(base1, n, 100 + i) for i, n in enumerate([3, 40, 17, 40, 1, 64, 25, 8, 33, 12])]
    requests.append(make_request(base1, 10, 99, batch=2))  # B = 2 cannot be merged: runs alone
    sequential = [outputs(predict.Predict(predict_request(r))) for r in requests]
    for r, s in zip(requests, sequential):  # the sequential path is the SavedModel itself
        np.testing.assert_allclose(s["score"], direct(base1, 1, r)["score"], rtol=1e-5, atol=1e-6)

    before = srv.stats()
    for _ in range(5):  # a round in which nothing merged would prove nothing: retry a few
        results: list = [None] * len(requests)
        errors: list = []
        barrier = threading.Barrier(len(requests))

        def client(i: int) -> None:
            req = predict_request(requests[i])
            barrier.wait()
            try:
                results[i] = outputs(predict.Predict(req))
            except grpc.RpcError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for got, want in zip(results, sequential):
            assert set(got) == set(want)
            for k in want:
                assert got[k].shape == want[k].shape
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
        if srv.stats()["batched_requests"] > before["batched_requests"]:
            break
    stats = srv.stats()
    assert stats["largest_batch"] > 1 and stats["batched_calls"] > before["batched_calls"], stats


# --------------------------------------------------------------------------- versions


def test_new_version_switches_in_without_failing_a_request(exported_model: Path, tmp_path: Path) -> None:
    from serving.model_server import ModelServer

    base = copy_base(exported_model, tmp_path)
    srv = ModelServer(base, MODEL, poll_seconds=0.2, max_batch=4, batch_timeout_ms=2.0)
    port = srv.start(0)
    channel, predict, model = stubs(port)
    inputs = make_request(base, 20, 7)
    want = direct(base, 1, inputs)["score"]
    seen: list[int] = []                       # every answer's version, all clients
    per_client: list[list[int]] = [[], []]     # each client's own sequence
    errors: list = []
    stop = threading.Event()

    def loop(i: int) -> None:
        req = predict_request(inputs)
        while not stop.is_set():
            try:
                resp = predict.Predict(req, timeout=30)
                np.testing.assert_allclose(outputs(resp)["score"], want, rtol=1e-5, atol=1e-6)
                per_client[i].append(resp.model_spec.version.value)
                seen.append(resp.model_spec.version.value)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)

    clients = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    try:
        for t in clients:
            t.start()
        wait_for(lambda: all(len(c) >= 2 for c in per_client), "first answers")
        (base / ".tmp-5").mkdir()  # a half-written export under a dot-name: ignored
        add_version(base, 2)
        wait_for(lambda: all(c[-1] == 2 for c in per_client), "version 2 to answer")
        mark = len(seen)
        wait_for(lambda: len(seen) >= mark + 4, "more answers from version 2")
        assert status_of(model) == {2: "AVAILABLE", 1: "END"}  # latest policy keeps 1 version

        broken = base / ".tmp-3"  # an export that cannot load: skipped, 2 keeps serving
        shutil.copytree(base / "2", broken)
        (broken / "saved_model.pb").write_bytes(b"not a saved model")
        os.rename(broken, base / "3")
        wait_for(lambda: status_of(model).get(3) == "END", "version 3 to fail")
        mark = len(seen)
        wait_for(lambda: len(seen) >= mark + 4, "answers after the failed load")
        assert set(seen[mark:]) == {2}
        assert srv.versions() == [2]

        shutil.rmtree(base / "2")  # the served version's directory disappears: 1 is the newest loadable again
        wait_for(lambda: all(c[-1] == 1 for c in per_client), "version 1 to answer again")
        assert status_of(model)[1] == "AVAILABLE" and status_of(model)[2] == "END"
    finally:
        stop.set()
        for t in clients:
            t.join()
        channel.close()
        srv.stop()
    assert not errors, errors[:3]
    for versions in per_client:  # 1 -> 2 once, then back to 1 once: never flip-flopping
        switches = [b for a, b in zip(versions, versions[1:]) if a != b]
        assert switches == [2, 1], switches


# --------------------------------------------------------------------------- process


def test_spawned_process_serves_and_stops_on_sigterm(base1: Path, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.model_server import spawn_model_server

    log = tmp_path / "model-server.log"
    handle = spawn_model_server(base1, MODEL, port=0, poll_seconds=0.5, max_batch=1, log_path=log)
    try:
        assert handle.alive and handle.port > 0
        channel, predict, _ = stubs(handle.port)
        inputs = make_request(base1, 12, 8)
        resp = predict.Predict(predict_request(inputs), timeout=30)
        assert resp.model_spec.version.value == 1
        np.testing.assert_allclose(outputs(resp)["score"], direct(base1, 1, inputs)["score"], rtol=1e-5, atol=1e-6)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        code = handle.stop()
    channel.close()
    assert code == 0
    text = log.read_text()
    assert f"model server listening on 127.0.0.1:{handle.port}" in text
    assert "SIGTERM received" in text and "model server stopped" in text


def test_tf_serving_deploy_configs_parse() -> None:
    """deploy/tfserving/ is what a real TensorFlow Serving reads: it must parse as its protos."""
    import re

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    folder = Path(__file__).resolve().parents[1] / "deploy" / "tfserving"
    cfg = text_format.Parse((folder / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = cfg.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (MODEL, "/models/ranker", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1
    # BatchingParameters' proto is not in tensorflow-serving-api: check its fields by name
    text = (folder / "batching_parameters.txt").read_text()
    fields = dict(re.findall(r"^(\w+)\s*(?:\{\s*value:\s*(\d+)\s*\}|:\s*(?:true|false))", text, re.M))
    assert set(fields) == {"max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches",
                           "pad_variable_length_inputs"}
    assert re.search(r"^pad_variable_length_inputs:\s*true$", text, re.M)
    assert int(fields["max_batch_size"]) >= 2

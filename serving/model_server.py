"""A TensorFlow-Serving-protocol model server for one machine.

The TensorFlow Serving binary cannot be installed everywhere (not in this project's
environment, for one), so this module serves the same SavedModel directory over the
same gRPC API, and the gateway cannot tell the difference: pointing the gateway at a
real ``tensorflow_model_server`` is a configuration change (``deploy/tfserving/``).

What it implements, with TF Serving's semantics and status codes:

* ``tensorflow.serving.PredictionService``: ``Predict`` (model name, version or version
  label, signature, output_filter) and ``GetModelMetadata`` (``signature_def``);
* ``tensorflow.serving.ModelService``: ``GetModelStatus`` (START/LOADING/AVAILABLE/
  UNLOADING/END per version);
* the file-system poller: every ``poll_seconds`` the base path is scanned for integer
  version directories (dot-names and directories without ``saved_model.pb`` are
  ignored), new ones are loaded and warmed up with ``assets.extra/
  tf_serving_warmup_requests`` while the old version keeps serving, then switched in
  by one reference swap; versions beyond the newest ``keep_versions`` (TF Serving's
  ``latest`` policy) or whose directory disappeared are unloaded. A version that fails
  to load is logged and skipped (retried only when its files change);
* request batching: concurrent B=1 Predict calls with the same signature and shapes
  (the candidate dimension N may differ, it is padded) are merged into one model call
  (``max_batch``, ``batch_timeout_ms``; ``max_batch=1`` turns it off);
* ``grpc.health.v1`` (SERVING once a version is loaded) and server reflection.

Two ways to run it::

    python -m serving.model_server --base var/models/ranker --name ranker --port 8500

    server = ModelServer(base, "ranker", poll_seconds=1.0)
    port = server.start(0)            # loads what is there, then listens
    ...
    server.stop()

    handle = spawn_model_server(base, "ranker", port=0)   # a child process
    handle.port, handle.process
    handle.stop()                                         # SIGTERM, grace, then kill
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import grpc
import numpy as np

from serving.tensors import dtype_name, from_tensor_proto, tensor_shape, to_tensor_proto

log = logging.getLogger("serving.model_server")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
LISTEN_LINE = "model server listening on {host}:{port}"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.so_reuseport", 0),  # a busy port is an error, not a second server on it
]
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving would answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- servables


@dataclass
class Signature:
    """One signature of a loaded version: its function and TensorInfo specs (-1 = any size)."""

    name: str
    fn: Any
    inputs: dict[str, tuple[int, tuple[int, ...]]]   # alias -> (DataType, shape)
    outputs: dict[str, tuple[int, tuple[int, ...]]]
    tf_dtypes: dict[str, Any]
    # inputs / outputs whose 2nd dimension is variable (the candidate dimension N):
    # the batcher pads these inputs to a common N and slices these outputs back
    padded_inputs: tuple[str, ...] = ()
    padded_outputs: tuple[str, ...] = ()

    def decode(self, protos: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Request TensorProtos -> numpy, checked against the signature (INVALID_ARGUMENT naming the input)."""
        unknown = sorted(set(protos) - set(self.inputs))
        if unknown:
            raise _invalid(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                           f"Inputs expected to be in the set {{{','.join(sorted(self.inputs))}}}.")
        missing = sorted(set(self.inputs) - set(protos))
        if missing:
            raise _invalid(f"input {', '.join(repr(m) for m in missing)} missing: signature {self.name!r} expects "
                           f"{{{','.join(sorted(self.inputs))}}}")
        out: dict[str, np.ndarray] = {}
        batch: tuple[str, int] | None = None
        for alias, proto in protos.items():
            dtype, shape = self.inputs[alias]
            if proto.dtype != dtype:
                raise _invalid(f"input {alias!r} has dtype {dtype_name(proto.dtype)}, "
                               f"signature {self.name!r} expects {dtype_name(dtype)}")
            got = tensor_shape(proto)
            if len(got) != len(shape) or any(w != -1 and g != w for g, w in zip(got, shape)):
                raise _invalid(f"input {alias!r} has shape {list(got)}, signature {self.name!r} expects "
                               f"{[None if d == -1 else d for d in shape]}")
            try:
                value = from_tensor_proto(proto)
            except (ValueError, TypeError) as exc:
                raise _invalid(f"input {alias!r}: {exc}") from None
            if value.ndim:
                if batch is None:
                    batch = (alias, value.shape[0])
                elif value.shape[0] != batch[1]:
                    raise _invalid(f"input {alias!r} has batch size {value.shape[0]} but {batch[0]!r} has "
                                   f"{batch[1]}: all inputs must have equal 0th-dimension size")
            out[alias] = value
        return out

    def output_names(self, output_filter: Sequence[str]) -> list[str]:
        if not output_filter:
            return list(self.outputs)
        names = list(dict.fromkeys(output_filter))
        for n in names:
            if n not in self.outputs:
                raise _invalid(f"output tensor alias not found in signature: {n} Outputs expected to be in the "
                               f"set {{{','.join(sorted(self.outputs))}}}.")
        return names


class Servable:
    """One loaded version: the SavedModel, its MetaGraphDef signatures, and how to call them."""

    def __init__(self, version: int, path: Path, loaded: Any, signature_defs: Any) -> None:
        import tensorflow as tf

        self.version, self.path, self.loaded = version, path, loaded
        self.signature_defs = signature_defs  # MetaGraphDef.signature_def (for GetModelMetadata)
        self.signatures: dict[str, Signature] = {}
        for name, fn in loaded.signatures.items():
            sd = signature_defs.get(name) if hasattr(signature_defs, "get") else signature_defs[name]
            if sd is None:
                continue

            def specs(infos: Any) -> dict[str, tuple[int, tuple[int, ...]]]:
                return {k: (v.dtype, tuple(-1 if v.tensor_shape.unknown_rank else d.size for d in v.tensor_shape.dim))
                        for k, v in infos.items()}

            inputs, outputs = specs(sd.inputs), specs(sd.outputs)
            self.signatures[name] = Signature(
                name=name, fn=fn, inputs=inputs, outputs=outputs,
                tf_dtypes={k: tf.dtypes.as_dtype(d) for k, (d, _) in inputs.items()},
                padded_inputs=tuple(k for k, (_, s) in inputs.items() if len(s) >= 2 and s[1] == -1),
                padded_outputs=tuple(k for k, (_, s) in outputs.items() if len(s) >= 2 and s[1] == -1))

    @classmethod
    def load(cls, version: int, path: Path) -> "Servable":
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
        metas = [m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags] or list(sm.meta_graphs)
        if not metas:
            raise ValueError(f"{path}: saved_model.pb holds no MetaGraphDef")
        loaded = tf.saved_model.load(str(path), tags=["serve"])
        return cls(version, path, loaded, metas[0].signature_def)

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{name or DEFAULT_SIGNATURE}\" not found.")
        return sig

    def run(self, sig: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature on numpy inputs; TF errors become INVALID_ARGUMENT / INTERNAL."""
        import tensorflow as tf

        try:
            feed = {k: tf.constant(v, dtype=sig.tf_dtypes[k]) for k, v in inputs.items()}
            out = sig.fn(**feed)
            return {k: v.numpy() for k, v in out.items()}
        except tf.errors.InvalidArgumentError as exc:
            raise _invalid(f"model {self.version}: {exc.message}") from None
        except tf.errors.OpError as exc:
            raise ServingError(grpc.StatusCode.INTERNAL, f"model {self.version}: {exc.message}") from None

    def warm_up(self, model_name: str) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (PredictLog records); returns how many ran."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        n = 0
        for raw in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            if record.WhichOneof("log_type") != "predict_log":
                log.warning("version %d: warm-up record of type %s skipped (only predict_log is served)",
                            self.version, record.WhichOneof("log_type"))
                continue
            req = record.predict_log.request
            sig = self.signature(req.model_spec.signature_name)
            self.run(sig, sig.decode(req.inputs))
            n += 1
        return n


# --------------------------------------------------------------------------- batching


class _Ticket:
    """One Predict call as the batcher sees it; ``pending`` until a batch thread takes it."""

    __slots__ = ("pending", "key", "servable", "sig", "inputs", "n", "done", "result", "error", "enqueued")

    def __init__(self) -> None:
        self.pending = True
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class Batcher:
    """Merges concurrent B=1 Predict calls into one model call.

    A batch thread takes the oldest waiting request, then collects more until
    ``max_batch`` or until ``timeout`` has passed since that request arrived. It stops
    waiting early when no other Predict call is between arrival and the queue, so a
    lone request under light load is not delayed. Requests must share the version,
    signature and every input shape except the candidate dimension N (2nd dimension of
    inputs whose signature leaves it open); N is padded to the batch's largest by
    repeating the request's first candidate and the outputs are sliced back.
    """

    def __init__(self, max_batch: int, timeout_s: float, threads: int = 1) -> None:
        self.max_batch, self.timeout_s = max(1, int(max_batch)), max(0.0, float(timeout_s))
        self.enabled = self.max_batch > 1
        self._queue: queue.Queue[_Ticket] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # Predict calls that arrived and were not yet taken by a batch thread or run alone
        self._stop = threading.Event()
        self.stats = {"model_calls": 0, "batched_calls": 0, "batched_requests": 0, "largest_batch": 0}
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
                         for i in range(max(1, threads) if self.enabled else 0)]
        for t in self._threads:
            t.start()

    # the Predict handler's side
    def arrive(self) -> _Ticket:
        with self._lock:
            self._pending += 1
        return _Ticket()

    def leave(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.pending:
                ticket.pending = False
                self._pending -= 1

    def key_for(self, servable: Servable, sig: Signature, inputs: Mapping[str, np.ndarray]) -> tuple | None:
        """The batching key, or None when the request must run alone."""
        if not self.enabled:
            return None
        n = None
        parts = []
        for name, value in inputs.items():
            if value.ndim == 0 or value.shape[0] != 1:
                return None
            if name in sig.padded_inputs:
                if n is None:
                    n = value.shape[1]
                elif value.shape[1] != n:
                    return None
                parts.append((name, value.shape[2:]))
            else:
                parts.append((name, value.shape))
        if n == 0:
            return None
        return (id(servable), sig.name, tuple(sorted(parts)))

    def run(self, ticket: _Ticket, key: tuple, servable: Servable, sig: Signature,
            inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ticket.key, ticket.servable, ticket.sig, ticket.inputs = key, servable, sig, inputs
        pad = sig.padded_inputs
        ticket.n = inputs[pad[0]].shape[1] if pad else 0
        ticket.enqueued = time.monotonic()
        self._queue.put(ticket)
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    def run_alone(self, servable: Servable, sig: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.stats["model_calls"] += 1
        return servable.run(sig, inputs)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    # the batch threads' side
    def _take(self, ticket: _Ticket) -> _Ticket:
        with self._lock:
            if ticket.pending:
                ticket.pending = False
                self._pending -= 1
        return ticket

    def _others_coming(self) -> bool:
        with self._lock:
            return self._pending > 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._take(self._queue.get(timeout=0.2))
            except queue.Empty:
                continue
            batch = [first]
            deadline = first.enqueued + self.timeout_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._take(self._queue.get_nowait()))
                    continue
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._others_coming():
                    break
                try:
                    batch.append(self._take(self._queue.get(timeout=min(remaining, 0.0005))))
                except queue.Empty:
                    continue
            groups: dict[tuple, list[_Ticket]] = {}
            for t in batch:
                groups.setdefault(t.key, []).append(t)
            for group in groups.values():
                try:
                    self._run_group(group)
                except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting
                    log.exception("batch thread error")
                    for t in group:
                        if not t.done.is_set():
                            t.error = exc
                            t.done.set()

    def _run_group(self, group: list[_Ticket]) -> None:
        if len(group) > 1:
            try:
                results = self._run_merged(group)
            except Exception as exc:  # one bad request must not fail the others: run them alone
                log.debug("merged batch of %d failed (%s); running its requests alone", len(group), exc)
                results = None
            if results is not None:
                for t, r in zip(group, results):
                    t.result = r
                    t.done.set()
                return
        for t in group:
            try:
                t.result = self.run_alone(t.servable, t.sig, t.inputs)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                t.error = exc
            t.done.set()

    def _run_merged(self, group: list[_Ticket]) -> list[dict[str, np.ndarray]] | None:
        sig, servable = group[0].sig, group[0].servable
        n_max = max(t.n for t in group)
        merged = {}
        for name in sig.inputs:
            parts = []
            for t in group:
                v = t.inputs[name]
                if name in sig.padded_inputs and t.n < n_max:
                    filler = np.repeat(v[:, :1], n_max - t.n, axis=1)  # a real candidate, repeated
                    v = np.concatenate([v, filler], axis=1)
                parts.append(v)
            merged[name] = np.concatenate(parts, axis=0)
        out = servable.run(sig, merged)
        if any(v.ndim == 0 or v.shape[0] != len(group) for v in out.values()):
            return None  # an output without the batch dimension cannot be split
        with self._lock:
            self.stats["model_calls"] += 1
            self.stats["batched_calls"] += 1
            self.stats["batched_requests"] += len(group)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
        results = []
        for i, t in enumerate(group):
            r = {}
            for k, v in out.items():
                row = v[i:i + 1]
                if k in sig.padded_outputs and row.ndim >= 2 and row.shape[1] == n_max:
                    row = row[:, :t.n]
                r[k] = row
            results.append(r)
        return results


# --------------------------------------------------------------------------- versions


def _fingerprint(path: Path) -> tuple:
    """What must change before a version that failed to load is tried again."""
    items = []
    for sub in (path, path / "variables"):
        try:
            for e in os.scandir(sub):
                st = e.stat(follow_symlinks=False)
                items.append((sub.name, e.name, st.st_size, st.st_mtime_ns))
        except OSError:
            pass
    return tuple(sorted(items))


def scan_versions(base: Path) -> dict[int, Path]:
    """Complete integer version directories under ``base`` (dot-names and partial ones ignored)."""
    out: dict[int, Path] = {}
    try:
        entries = list(os.scandir(base))
    except OSError:
        return out
    for e in entries:
        if not e.name.isdigit() or not e.is_dir():
            continue
        p = Path(e.path)
        if (p / "saved_model.pb").is_file():
            out[int(e.name)] = p
    return out


@dataclass
class _VersionStatus:
    state: str                 # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: int = 0        # tensorflow.error.Code
    error_message: str = ""


class ModelServer:
    """The in-process server: ``start(port) -> port``, ``stop()``; see the module docstring."""

    def __init__(self, base: str | os.PathLike, name: str = "ranker", *, poll_seconds: float = 2.0,
                 max_batch: int = 8, batch_timeout_ms: float = 2.0, keep_versions: int = 1,
                 batch_threads: int = 1, host: str = "127.0.0.1", max_workers: int = 16,
                 labels: Mapping[str, int] | None = None) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be >= 1")
        self.base, self.name, self.host = Path(base), name, host
        self.poll_seconds, self.keep_versions, self.max_workers = float(poll_seconds), int(keep_versions), max_workers
        self.labels = dict(labels or {})
        self.batcher = Batcher(max_batch, batch_timeout_ms / 1000.0, batch_threads)
        self._servables: dict[int, Servable] = {}   # replaced, never mutated: readers take a snapshot
        self._status: dict[int, _VersionStatus] = {}
        self._failed: dict[int, tuple] = {}         # version -> fingerprint of the files that failed
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._server: grpc.Server | None = None
        self._health: Any = None
        self._missing_logged = False
        self.port: int | None = None
        self._rpcs_in_flight = 0

    # ---- versions
    def versions(self) -> list[int]:
        """Loaded (AVAILABLE) versions, newest first."""
        return sorted(self._servables, reverse=True)

    def status(self) -> dict[int, str]:
        with self._lock:
            return {v: s.state for v, s in self._status.items()}

    def stats(self) -> dict[str, int]:
        return dict(self.batcher.stats)

    def _set_status(self, version: int, state: str, code: int = 0, message: str = "") -> None:
        with self._lock:
            self._status[version] = _VersionStatus(state, code, message)

    def poll_once(self) -> None:
        """One pass of the file-system poller: load new versions, unload old or vanished ones."""
        with self._poll_lock:
            found = scan_versions(self.base)
            if not found and not self.base.is_dir():
                if not self._missing_logged:
                    log.warning("model base path %s does not exist (yet); no versions to serve", self.base)
                    self._missing_logged = True
            else:
                self._missing_logged = False
            for v in list(self._failed):
                if v not in found or _fingerprint(found[v]) != self._failed[v]:
                    del self._failed[v]  # gone or changed: may be tried again
            candidates = sorted((v for v in found if v not in self._failed), reverse=True)
            aspired = candidates[:self.keep_versions]
            for v in aspired:  # newest first, so the latest is served as soon as possible
                if v not in self._servables and not self._stop.is_set():
                    self._load(v, found[v])
            loaded_aspired = [v for v in aspired if v in self._servables]
            for v in list(self._servables):
                if v not in found:
                    self._unload(v, "its directory is gone")
                elif v not in aspired and (loaded_aspired or v not in candidates):
                    # availability first: an old version goes only once an aspired one serves
                    self._unload(v, f"policy keeps the newest {self.keep_versions}")
            self._update_health()

    def _load(self, version: int, path: Path) -> None:
        self._set_status(version, "LOADING")
        log.info("loading %s version %d from %s", self.name, version, path)
        t0 = time.monotonic()
        try:
            servable = Servable.load(version, path)
            n = servable.warm_up(self.name)
        except Exception as exc:  # noqa: BLE001 - a bad export must not take the server down
            msg = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            log.error("version %d of %s failed to load, skipped (the loaded versions keep serving): %s",
                      version, self.name, msg)
            self._failed[version] = _fingerprint(path)
            self._set_status(version, "END", 2, f"load failed: {msg}")  # error code UNKNOWN
            return
        with self._lock:
            new = dict(self._servables)
            new[version] = servable
            self._servables = new  # the atomic switch
            self._status[version] = _VersionStatus("AVAILABLE")
        log.info("%s version %d AVAILABLE (%.1fs, %d warm-up request%s); serving versions %s", self.name, version,
                 time.monotonic() - t0, n, "" if n == 1 else "s", self.versions())

    def _unload(self, version: int, why: str) -> None:
        with self._lock:
            self._status[version] = _VersionStatus("UNLOADING")
            new = dict(self._servables)
            new.pop(version, None)
            self._servables = new  # in-flight requests keep their reference until they finish
            self._status[version] = _VersionStatus("END")
        log.info("unloaded %s version %d (%s); serving versions %s", self.name, version, why, self.versions())

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - keep polling
                log.exception("model poll failed")

    def _update_health(self) -> None:
        if self._health is None:
            return
        from grpc_health.v1 import health_pb2

        state = health_pb2.HealthCheckResponse.SERVING if self._servables else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            self._health.set(service, state)

    # ---- request side
    def resolve(self, spec: Any) -> Servable:
        """The version a ModelSpec asks for (latest by default), or NOT_FOUND / INVALID_ARGUMENT."""
        snapshot = self._servables
        if spec.name != self.name:
            which = f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version") else f"Latest({spec.name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {which}")
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            v = spec.version.value
            s = snapshot.get(v)
            if s is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({self.name}, {v})")
            return s
        if choice == "version_label":
            if spec.version_label not in self.labels:
                raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
            v = self.labels[spec.version_label]
            s = snapshot.get(v)
            if s is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({self.name}, {v})")
            return s
        if not snapshot:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})")
        return snapshot[max(snapshot)]

    def predict(self, request: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        ticket = self.batcher.arrive()
        try:
            servable = self.resolve(request.model_spec)
            sig = servable.signature(request.model_spec.signature_name)
            names = sig.output_names(request.output_filter)
            inputs = sig.decode(request.inputs)
            key = self.batcher.key_for(servable, sig, inputs)
            if key is None:
                self.batcher.leave(ticket)
                out = self.batcher.run_alone(servable, sig, inputs)
            else:
                out = self.batcher.run(ticket, key, servable, sig, inputs)
        finally:
            self.batcher.leave(ticket)
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = self.name
        resp.model_spec.version.value = servable.version
        resp.model_spec.signature_name = sig.name
        for k in names:
            resp.outputs[k].CopyFrom(to_tensor_proto(out[k]))
        return resp

    def metadata(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(request.metadata_field)
        if not fields:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for f in fields:
            if f != "signature_def":
                raise _invalid(f"Metadata field {f} is not supported")
        servable = self.resolve(request.model_spec)
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = self.name
        resp.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for k, v in servable.signature_defs.items():
            sig_map.signature_def[k].CopyFrom(v)
        resp.metadata["signature_def"].Pack(sig_map)
        return resp

    def model_status(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        spec = request.model_spec
        if spec.name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        with self._lock:
            status = dict(self._status)
        if spec.WhichOneof("version_choice") == "version":
            if spec.version.value not in status:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} of model {self.name}")
            status = {spec.version.value: status[spec.version.value]}
        elif spec.WhichOneof("version_choice") == "version_label":
            v = self.labels.get(spec.version_label)
            if v is None:
                raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
            if v not in status:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {v} of model {self.name}")
            status = {v: status[v]}
        if not status:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {self.name}")
        resp = get_model_status_pb2.GetModelStatusResponse()
        State = get_model_status_pb2.ModelVersionStatus.State
        for v in sorted(status, reverse=True):
            s = status[v]
            mvs = resp.model_version_status.add(version=v, state=State.Value(s.state))
            mvs.status.error_code = s.error_code
            mvs.status.error_message = s.error_message
        return resp

    # ---- lifecycle
    def start(self, port: int = 0) -> int:
        """Load what the base path holds, listen on ``host:port`` (0 = any free port), start polling."""
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if self._server is not None:
            raise RuntimeError("model server already started")
        self._stop.clear()
        self.poll_once()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="model-grpc"),
                             options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionServicer(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((PREDICTION_SERVICE, MODEL_SERVICE,
                                             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                             reflection.SERVICE_NAME), server)
        try:
            bound = server.add_insecure_port(f"{self.host}:{int(port)}")
        except RuntimeError as exc:
            raise OSError(f"model server cannot listen on {self.host}:{port}: {exc}") from None
        if not bound:
            raise OSError(f"model server cannot listen on {self.host}:{port}")
        self._update_health()
        server.start()
        self._server, self.port = server, bound
        self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._poller.start()
        log.info("%s on %s:%d serving %s versions %s from %s (poll %.1fs, max_batch %d, batch_timeout %.1fms)",
                 type(self).__name__, self.host, bound, self.name, self.versions(), self.base, self.poll_seconds,
                 self.batcher.max_batch, self.batcher.timeout_s * 1000)
        return bound

    def stop(self, grace: float = 5.0) -> None:
        """Stop polling, refuse new calls, let in-flight calls finish for ``grace`` seconds."""
        self._stop.set()
        if self._server is not None:
            if self._health is not None:
                self._health.enter_graceful_shutdown()
            t0 = time.monotonic()
            done = self._server.stop(grace)  # refuses new calls; in-flight ones get ``grace``
            # gRPC also waits out the grace period for idle client connections (the gateway keeps
            # one open), so once no call is in flight the rest of the grace is cut short.
            idle_checks = 0
            while not done.wait(0.05):
                idle_checks = idle_checks + 1 if self._rpcs_in_flight == 0 else 0
                if idle_checks >= 2:
                    self._server.stop(0)
                    break
            done.wait()
            self._server = None
            log.debug("gRPC server stopped in %.2fs", time.monotonic() - t0)
        if self._poller is not None:
            self._poller.join(timeout=60)
            self._poller = None
        self.batcher.stop()
        st = self.batcher.stats
        if st["model_calls"]:
            log.info("model calls %d, of which merged %d (%d requests, largest batch %d)", st["model_calls"],
                     st["batched_calls"], st["batched_requests"], st["largest_batch"])

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- gRPC servicers


def _call(server: ModelServer, context: grpc.ServicerContext, fn: Any, request: Any) -> Any:
    with server._lock:
        server._rpcs_in_flight += 1
    try:
        return fn(request)
    except ServingError as exc:
        context.abort(exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001
        log.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        with server._lock:
            server._rpcs_in_flight -= 1


def _servicer_bases() -> tuple[type, type]:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer


_PredictionBase, _ModelBase = _servicer_bases()


class _PredictionServicer(_PredictionBase):  # type: ignore[misc, valid-type]
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _call(self.server, context, self.server.predict, request)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _call(self.server, context, self.server.metadata, request)


class _ModelServicer(_ModelBase):  # type: ignore[misc, valid-type]
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _call(self.server, context, self.server.model_status, request)


# --------------------------------------------------------------------------- subprocess


@dataclass
class ModelServerProcess:
    """A model server running as a child process (``spawn_model_server``)."""

    process: subprocess.Popen
    port: int
    host: str
    log_path: Path
    _tmp: Any = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """``host:port`` for a gRPC channel."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait ``grace`` (+5 s to exit), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace + 5.0)
            except subprocess.TimeoutExpired:
                log.warning("model server pid %d ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return self.process.returncode

    def __enter__(self) -> "ModelServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace")


def spawn_model_server(base: str | os.PathLike, name: str = "ranker", port: int = 0, *, poll_seconds: float = 2.0,
                       max_batch: int = 8, batch_timeout_ms: float = 2.0, keep_versions: int = 1,
                       host: str = "127.0.0.1", log_path: str | os.PathLike | None = None,
                       timeout: float = 120.0, grace: float = 5.0, extra_args: Iterable[str] = (),
                       env: Mapping[str, str] | None = None) -> ModelServerProcess:
    """Start ``python -m serving.model_server`` as a child and wait until it listens.

    It listens only after loading the versions present at start, so on return those are
    served. The port (useful with ``port=0``) comes back through a ``--port-file``. The
    child's stdout and stderr are appended to ``log_path`` (a temp file when None).
    Raises RuntimeError with the log's tail if the child exits or is not ready in
    ``timeout`` seconds.
    """
    tmp = tempfile.TemporaryDirectory(prefix="model-server-")
    port_file = Path(tmp.name) / "port"
    log_file = Path(log_path) if log_path is not None else Path(tmp.name) / "model-server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "serving.model_server", "--base", str(base), "--name", name, "--port", str(port),
           "--host", host, "--poll-seconds", str(poll_seconds), "--max-batch", str(max_batch),
           "--batch-timeout-ms", str(batch_timeout_ms), "--keep-versions", str(keep_versions),
           "--grace", str(grace), "--port-file", str(port_file), *extra_args]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
                                cwd=root)
    deadline = time.monotonic() + timeout
    while True:
        if port_file.exists():
            bound = int(port_file.read_text().strip())
            log.info("model server pid %d listening on %s:%d (log %s)", proc.pid, host, bound, log_file)
            return ModelServerProcess(proc, bound, host, log_file, tmp)
        if proc.poll() is not None:
            tmp.cleanup()
            raise RuntimeError(f"model server exited with code {proc.returncode} before listening; "
                               f"log {log_file}:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tmp.cleanup()
            raise RuntimeError(f"model server not listening after {timeout:.0f}s; log {log_file}:\n{_tail(log_file)}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- command line


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _label(text: str) -> tuple[str, int]:
    name, sep, version = text.partition("=")
    if not sep or not name or not version.isdigit():
        raise argparse.ArgumentTypeError(f"--label wants NAME=VERSION, got {text!r}")
    return name, int(version)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.model_server",
                                description="TensorFlow-Serving-protocol model server for one SavedModel base path.")
    p.add_argument("--base", required=True, help="model base path holding <version>/saved_model.pb directories")
    p.add_argument("--name", default="ranker", help="model name clients put in ModelSpec.name")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = any free port; the chosen one is printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="file-system poll interval for new versions")
    p.add_argument("--max-batch", type=int, default=8, help="most Predict calls merged into one model call (1 = off)")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0, help="how long a request waits for others to batch with")
    p.add_argument("--batch-threads", type=int, default=1, help="threads running merged batches")
    p.add_argument("--keep-versions", type=int, default=1, help="newest versions kept loaded (TF Serving's latest policy)")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="NAME=VERSION",
                   help="a version label (ModelSpec.version_label); repeatable")
    p.add_argument("--port-file", help="write the bound port to this file (atomically) once listening")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM/SIGINT")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ModelServer(args.base, args.name, poll_seconds=args.poll_seconds, max_batch=args.max_batch,
                         batch_timeout_ms=args.batch_timeout_ms, keep_versions=args.keep_versions,
                         batch_threads=args.batch_threads, host=args.host, labels=dict(args.label))
    try:
        port = server.start(args.port)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    print(LISTEN_LINE.format(host=args.host, port=port), flush=True)
    if args.port_file:
        _atomic_write(Path(args.port_file), f"{port}\n")
    while not stop.wait(0.5):
        pass
    log.info("%s received; stopping (grace %.1fs)", signal.Signals(received[0]).name, args.grace)
    server.stop(args.grace)
    log.info("model server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

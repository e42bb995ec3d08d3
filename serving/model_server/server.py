"""The in-process server: loaded versions, the request side (Predict, metadata, status), lifecycle, servicers."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Mapping

import grpc

from serving.model_server.batching import Batcher
from serving.model_server.servable import Servable
from serving.model_server.signature import ServingError, invalid
from serving.model_server.version_source import VersionStatus, fingerprint, scan_versions
from serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.so_reuseport", 0),  # a busy port is an error, not a second server on it
]
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


class ModelServer:
    """The in-process server: ``start(port) -> port``, ``stop()``; see the module docstring."""

    def __init__(self, base: str | os.PathLike, name: str = "ranker", *, poll_seconds: float = 2.0,
                 max_batch: int = 8, batch_timeout_ms: float = 2.0, keep_versions: int = 1,
                 batch_threads: int = 1, host: str = "127.0.0.1", max_workers: int = 16,
                 labels: Mapping[str, int] | None = None, max_in_flight: int = 32) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be >= 1")
        self.base, self.name, self.host = Path(base), name, host
        self.poll_seconds, self.keep_versions, self.max_workers = float(poll_seconds), int(keep_versions), max_workers
        self.labels = dict(labels or {})
        # calls worked on at once over gRPC; one more is refused at once with RESOURCE_EXHAUSTED (0 = no bound)
        self.max_in_flight = int(max_in_flight)
        self.batcher = Batcher(max_batch, batch_timeout_ms / 1000.0, batch_threads)
        self._servables: dict[int, Servable] = {}   # replaced, never mutated: readers take a snapshot
        self._status: dict[int, VersionStatus] = {}
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
            self._status[version] = VersionStatus(state, code, message)

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
                if v not in found or fingerprint(found[v]) != self._failed[v]:
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
            self._failed[version] = fingerprint(path)
            self._set_status(version, "END", 2, f"load failed: {msg}")  # error code UNKNOWN
            return
        with self._lock:
            new = dict(self._servables)
            new[version] = servable
            self._servables = new  # the atomic switch
            self._status[version] = VersionStatus("AVAILABLE")
        log.info("%s version %d AVAILABLE (%.1fs, %d warm-up request%s); serving versions %s", self.name, version,
                 time.monotonic() - t0, n, "" if n == 1 else "s", self.versions())

    def _unload(self, version: int, why: str) -> None:
        with self._lock:
            self._status[version] = VersionStatus("UNLOADING")
            new = dict(self._servables)
            new.pop(version, None)
            self._servables = new  # in-flight requests keep their reference until they finish
            self._status[version] = VersionStatus("END")
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
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            v = self.labels[spec.version_label]
            s = snapshot.get(v)
            if s is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({self.name}, {v})")
            return s
        if not snapshot:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})")
        return snapshot[max(snapshot)]

    def predict(self, request: Any, deadline: float | None = None) -> Any:
        """One PredictRequest; ``deadline`` (monotonic clock) is the caller's: past it, nothing is computed."""
        from tensorflow_serving.apis import predict_pb2

        ticket = self.batcher.arrive(deadline)
        try:
            self.batcher.check_deadline(deadline)
            servable = self.resolve(request.model_spec)
            sig = servable.signature(request.model_spec.signature_name)
            names = sig.output_names(request.output_filter)
            inputs = sig.decode(request.inputs)
            key = self.batcher.key_for(servable, sig, inputs)
            if key is None:
                self.batcher.leave(ticket)
                out = self.batcher.run_alone(servable, sig, inputs, deadline)
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
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for f in fields:
            if f != "signature_def":
                raise invalid(f"Metadata field {f} is not supported")
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
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
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
                             options=GRPC_OPTIONS, maximum_concurrent_rpcs=self.max_in_flight or None)
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

    def start_local(self) -> None:
        """Load what the base path holds and start polling, without listening: for callers in this process
        (``serving.ranking_client.LocalStub``, ``serving.model_server = "in-process"``)."""
        if self._poller is not None:
            raise RuntimeError("model server already started")
        self._stop.clear()
        self.poll_once()
        self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._poller.start()
        log.info("%s in this process serving %s versions %s from %s (poll %.1fs, max_batch %d, batch_timeout %.1fms)",
                 type(self).__name__, self.name, self.versions(), self.base, self.poll_seconds,
                 self.batcher.max_batch, self.batcher.timeout_s * 1000)

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
            log.info("model calls %d, of which merged %d (%d requests, largest batch %d); %d expired uncomputed",
                     st["model_calls"], st["batched_calls"], st["batched_requests"], st["largest_batch"], st["expired"])

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- gRPC servicers


def caller_deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline on the monotonic clock, None when it set none."""
    remaining = context.time_remaining()  # without a client deadline gRPC answers ~9.2e18 (or None)
    return None if remaining is None or remaining > 1e9 else time.monotonic() + remaining


def _call(server: ModelServer, context: grpc.ServicerContext, fn: Any, request: Any, **kwargs: Any) -> Any:
    with server._lock:
        server._rpcs_in_flight += 1
    try:
        return fn(request, **kwargs)
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
        return _call(self.server, context, self.server.predict, request, deadline=caller_deadline(context))

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _call(self.server, context, self.server.metadata, request)


class _ModelServicer(_ModelBase):  # type: ignore[misc, valid-type]
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _call(self.server, context, self.server.model_status, request)

"""Request batching: concurrent B=1 Predict calls merged into one model call (TF Serving's batcher)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Mapping

import grpc
import numpy as np

from serving.model_server.servable import Servable
from serving.model_server.signature import ServingError, Signature

log = logging.getLogger(__name__)


class _Ticket:
    """One Predict call as the batcher sees it; ``pending`` until a batch thread takes it."""

    __slots__ = ("pending", "key", "servable", "sig", "inputs", "n", "done", "result", "error", "enqueued",
                 "deadline")

    def __init__(self, deadline: float | None = None) -> None:
        self.pending = True
        self.deadline = deadline  # the caller's, on the monotonic clock; None = none
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

    A request whose caller's deadline has passed by the time its batch runs is answered
    DEADLINE_EXCEEDED without being computed: under overload the model's time goes to
    requests someone still waits for, not to answers nobody will read.
    """

    def __init__(self, max_batch: int, timeout_s: float, threads: int = 1) -> None:
        self.max_batch, self.timeout_s = max(1, int(max_batch)), max(0.0, float(timeout_s))
        self.enabled = self.max_batch > 1
        self._queue: queue.Queue[_Ticket] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # Predict calls that arrived and were not yet taken by a batch thread or run alone
        self._stop = threading.Event()
        self.stats = {"model_calls": 0, "batched_calls": 0, "batched_requests": 0, "largest_batch": 0, "expired": 0}
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
                         for i in range(max(1, threads) if self.enabled else 0)]
        for t in self._threads:
            t.start()

    # the Predict handler's side
    def arrive(self, deadline: float | None = None) -> _Ticket:
        with self._lock:
            self._pending += 1
        return _Ticket(deadline)

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

    def run_alone(self, servable: Servable, sig: Signature, inputs: Mapping[str, np.ndarray],
                  deadline: float | None = None) -> dict[str, np.ndarray]:
        self.check_deadline(deadline)
        with self._lock:
            self.stats["model_calls"] += 1
        return servable.run(sig, inputs)

    def check_deadline(self, deadline: float | None) -> None:
        """Raise DEADLINE_EXCEEDED (and count it) when ``deadline`` has passed."""
        if deadline is not None and time.monotonic() >= deadline:
            with self._lock:
                self.stats["expired"] += 1
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "the request's deadline passed before the model ran it (not computed)")

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
        live = []
        for t in group:
            try:
                self.check_deadline(t.deadline)
                live.append(t)
            except ServingError as exc:
                t.error = exc
                t.done.set()
        group = live
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
                t.result = self.run_alone(t.servable, t.sig, t.inputs, t.deadline)
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

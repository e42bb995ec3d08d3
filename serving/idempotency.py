"""A gateway's memory of recent idempotency keys: a retried ``RecordRating`` appends nothing new.

A client that lost the answer to a ``RecordRating`` (a timeout, a dropped connection) cannot know
whether its event was appended; it retries with the same ``idempotency_key``. Inside one gateway
process this map answers the retry with the first call's outcome: the action (the append) runs
once per key within ``ttl_s``; a concurrent duplicate waits for the first to finish, and a first
try that failed (nothing appended) lets the next one run. Across gateway processes the event id
derived from the key (``pipeline.events.keyed_event_id``) lets the stream job drop the duplicate.

The map is bounded twice: entries older than ``ttl_s`` are dropped, and beyond ``max_entries``
the oldest go first (insertion order is age order, so both are O(1) from the front). A key
forgotten early is only a weaker guarantee, never a wrong answer: the retry appends an event with
the same id, which the stream job still collapses.

Example::

    recent = RecentKeys(max_entries=100_000, ttl_s=86_400)
    ran = recent.once((42, "key-1"), (1193, 4.5, None), lambda: log.append(event))   # True
    ran = recent.once((42, "key-1"), (1193, 4.5, None), lambda: log.append(event))   # False: nothing appended
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable


class KeyReused(ValueError):
    """The key was used for a different request within the window (a caller bug, not a retry)."""


class KeyInProgress(RuntimeError):
    """The first call with this key is still running after ``wait_s``; the caller may retry later."""


@dataclass
class _Entry:
    fingerprint: Hashable
    expires: float
    done: threading.Event = field(default_factory=threading.Event)
    failed: bool = False


class RecentKeys:
    """Thread-safe, bounded (size and age) map of key -> the outcome of the first call with it."""

    def __init__(self, max_entries: int, ttl_s: float, wait_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError(f"max_entries and ttl_s must be positive, got {max_entries} and {ttl_s}")
        self.max_entries, self.ttl_s, self.wait_s, self.clock = max_entries, ttl_s, wait_s, clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._entries)

    def once(self, key: Hashable, fingerprint: Hashable, action: Callable[[], None]) -> bool:
        """Run ``action`` unless a call with ``key`` succeeded within ``ttl_s``; True when it ran here.

        ``fingerprint`` says what the call asks for: the same key with another fingerprint is ``KeyReused``.
        An exception from ``action`` propagates and forgets the key (nothing was done, so a retry must run).
        """
        while True:
            with self._lock:
                now = self.clock()
                self._expire(now)
                entry = self._entries.get(key)
                owner = entry is None
                if entry is None:
                    entry = self._entries[key] = _Entry(fingerprint, now + self.ttl_s)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
            if entry.fingerprint != fingerprint:
                raise KeyReused("was already used for a different request")
            if owner:
                try:
                    action()
                except BaseException:
                    entry.failed = True
                    with self._lock:
                        if self._entries.get(key) is entry:
                            del self._entries[key]
                    raise
                finally:
                    entry.done.set()
                return True
            if not entry.done.wait(self.wait_s):
                raise KeyInProgress(f"the first call with this key is still running after {self.wait_s:g} s")
            if not entry.failed:
                return False
            # the first call failed and was forgotten: this one tries again

    def _expire(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                return
            self._entries.popitem(last=False)

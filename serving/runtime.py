"""Process hygiene for the serving processes: keep the cyclic garbage collector off the long-lived heap.

A warm gateway holds ~380,000 tracked objects that live as long as their batch version (the per-movie
recall lists, the catalog, TensorFlow's Python objects); a request allocates and drops thousands more.
A full (generation 2) collection walks the whole heap with the GIL held: in the serving bench one stalled
every answer, refusals included, for ~200 ms (README, "Serving"). ``gc.freeze()`` moves everything alive
now into a permanent generation the collector skips; reference counting still frees those objects once
unused (a replaced version's lists hold no cycles), so only cyclic garbage alive at the moment of a freeze
is kept. The caches fill lazily as requests arrive, so the freeze repeats.
"""

from __future__ import annotations

import gc
import threading

FREEZE_SECONDS = 10.0


class GcFreezer:
    """``gc.freeze()`` now and every ``every_s`` seconds until ``stop()`` (a daemon thread)."""

    def __init__(self, every_s: float = FREEZE_SECONDS) -> None:
        self.every_s = float(every_s)
        self._stop = threading.Event()
        gc.freeze()
        self._thread = threading.Thread(target=self._loop, name="gc-freeze", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            gc.freeze()

    def stop(self) -> None:
        """End the thread and hand the frozen objects back to the collector (a process that goes on, such as
        a test session running several gateways, then collects what became cyclic garbage meanwhile)."""
        self._stop.set()
        self._thread.join(timeout=5)
        gc.unfreeze()

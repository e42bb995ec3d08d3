"""serving.runtime: the collector kept off the long-lived heap (pure process state, no servers)."""

from __future__ import annotations

import gc
import time

from serving.runtime import GcFreezer


def test_freezer_freezes_now_and_again_and_hands_back_on_stop() -> None:
    gc.unfreeze()
    freezer = GcFreezer(every_s=0.05)
    try:
        assert gc.get_freeze_count() > 0            # frozen at once
        late = [object() for _ in range(10)]        # allocated after the first freeze
        for _ in range(100):
            tracked = {id(o) for o in gc.get_objects()}
            if id(late) not in tracked:             # moved out of the collected generations by a later freeze
                break
            time.sleep(0.02)
        assert id(late) not in {id(o) for o in gc.get_objects()}
    finally:
        freezer.stop()
    assert gc.get_freeze_count() == 0 and not freezer._thread.is_alive()

"""Which versions a model base path holds: TF Serving's file-system source, and a version's state.

The scan itself is ``pipeline.home.model_versions``, shared with ``model.export``
(which numbers new exports) so the two never disagree on what a version is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.home import model_versions


def scan_versions(base: Path) -> dict[int, Path]:
    """Complete integer version directories under ``base`` (dot-names and partial ones ignored)."""
    return model_versions(base)


def fingerprint(path: Path) -> tuple:
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


@dataclass
class VersionStatus:
    state: str                 # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: int = 0        # tensorflow.error.Code
    error_message: str = ""

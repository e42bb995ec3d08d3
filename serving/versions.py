"""Which published batch version the gateway reads, and its in-memory movie catalog.

A request reads one ``BatchView`` (a store pinned to one version, and that version's
catalog) from start to end, so it never sees half a switch; the ``VersionTracker``
decides when a newer version replaces it, and loads it off the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pipeline.store import NotPublished, OnlineStore, StoreUnavailable
from serving.catalog import MovieCatalog

log = logging.getLogger("recsys.gateway")


@dataclass
class BatchView:
    """One published version: its store (per-version caches) and its movie catalog."""

    store: OnlineStore
    catalog: MovieCatalog


class VersionTracker:
    """The current published version, re-checked at most every ``check_seconds``.

    A new version is loaded (catalog included) before it replaces the old one, so a
    request never sees half a switch; when Redis cannot be read the last good view stays.
    Once a version is being served, a newer one's catalog is loaded on a background
    thread (requests keep reading the old view meanwhile, so a publish costs no request
    a catalog load); only the first version, or one asked for by ``recheck``, loads on
    the calling thread.
    """

    def __init__(self, store: OnlineStore, check_seconds: float,
                 load_catalog: Callable[[OnlineStore], MovieCatalog] = MovieCatalog.load) -> None:
        self.store, self.check_seconds, self.load_catalog = store, check_seconds, load_catalog
        self._view: BatchView | None = None
        self._checked = 0.0
        self._down_until = 0.0  # after a failed check, answer from the last good view until then
        self._sync_next = False  # recheck(): load the next new version on the caller's thread
        self._loading: str | None = None  # the version a background thread is loading
        self._lock = threading.Lock()

    @property
    def last_good(self) -> BatchView | None:
        return self._view

    def recheck(self) -> None:
        """Make the next ``view()`` read the current version again, and load it at once if new (the caller
        knows of a publish and wants it served from its next request)."""
        self._checked = float("-inf")
        self._down_until = float("-inf")
        self._sync_next = True

    def view(self) -> BatchView:
        """The current view; raises ``StoreUnavailable`` / ``NotPublished`` when none can be read."""
        now = time.monotonic()
        if self._view is not None and now - self._checked < self.check_seconds:
            return self._view
        if now < self._down_until:  # Redis failed a moment ago: do not queue every call behind a timeout
            raise StoreUnavailable("the store did not answer the last version check")
        with self._lock:
            if self._view is not None and time.monotonic() - self._checked < self.check_seconds:
                return self._view
            try:
                version = self.store.current_version()
            except StoreUnavailable:
                self._down_until = time.monotonic() + self.check_seconds
                raise
            except NotPublished:
                raise NotPublished("nothing published yet: run `recsys batch`") from None
            sync, self._sync_next = self._sync_next, False
            if self._view is None or (sync and self._view.store.version != version):
                self._view, self._loading = self._load(version), None
            elif self._view.store.version != version and self._loading != version:
                self._loading = version
                threading.Thread(target=self._load_in_background, args=(version,), name="catalog-load",
                                 daemon=True).start()
            self._checked = time.monotonic()
            return self._view

    def _load(self, version: str) -> BatchView:
        store = self.store.at_version(version)
        return BatchView(store=store, catalog=self.load_catalog(store))

    def _load_in_background(self, version: str) -> None:
        try:
            view = self._load(version)
        except Exception:  # noqa: BLE001 - the old view keeps serving; the next check tries again
            log.warning("loading batch version %s failed; still serving %s", version,
                        self._view.store.version if self._view else None, exc_info=True)
            view = None
        with self._lock:
            if view is not None and self._loading == version:
                self._view = view
                log.info("now serving batch version %s", version)
            if self._loading == version:
                self._loading = None

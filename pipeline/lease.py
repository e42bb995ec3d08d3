"""A Redis lease: a lock that is safe across retries, crashes and long holders.

Why not ``SET NX EX`` and ``DEL``: a holder that stalls past the TTL loses the lock
without knowing, a second holder takes it, and the first one's ``DEL`` then frees the
*second* one's lock. This lease closes those gaps:

* **compare-and-delete**: release (and renewal) is one Lua script that acts only
  when the key still holds *this* holder's value;
* **renewal**: a daemon thread extends the TTL every ``ttl / 3`` seconds while the
  holder works, so a long publish keeps its lock and a killed one loses it within
  one TTL;
* **fencing token**: every acquisition gets a number from a counter that only
  grows (``INCR``); the value stored in the lock starts with it, and the critical
  write (``fenced_eval``) checks in the same script that the lock still holds this
  token, so a holder that lost its lease cannot act on stale authority.

Example::

    with RedisLease(client, "rs:v1:publish-lock", "rs:v1:publish-seq", ttl=60) as lease:
        lease.token                       # 17: fencing token of this holder
        lease.check()                     # raises LeaseLost if the lease was lost
        lease.fenced_eval(SWITCH, [...])  # runs only while the lock holds this token
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Sequence

import redis

# KEYS[1] = lock, ARGV[1] = our value. Delete only our own lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] = lock, ARGV[1] = our value, ARGV[2] = ttl ms. Extend only our own lock.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LeaseError(RuntimeError):
    """The lease could not be taken; the message names the holder."""


class LeaseLost(LeaseError):
    """The lease expired or was taken over while this holder still worked."""


class RedisLease:
    """A fenced, renewed, compare-and-delete lock on one Redis key."""

    def __init__(self, client: redis.Redis, key: str, counter_key: str, ttl: float = 60.0,
                 owner: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.client, self.key, self.counter_key, self.ttl = client, key, counter_key, float(ttl)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.token: int | None = None
        self.value: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    # --- life cycle ---------------------------------------------------------------
    def acquire(self) -> "RedisLease":
        """Take the lock or raise :class:`LeaseError` naming the current holder."""
        token = int(self.client.incr(self.counter_key))
        value = f"{token}:{self.owner}:{time.time():.3f}"
        if not self.client.set(self.key, value, nx=True, px=int(self.ttl * 1000)):
            holder = self.client.get(self.key)
            left = self.client.pttl(self.key)
            raise LeaseError(f"{self.key} is held by {holder.decode() if holder else '(just released)'}"
                             f"{f', expires in {left / 1000:.0f} s unless renewed' if left and left > 0 else ''}")
        self.token, self.value = token, value
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> bool:
        """Stop renewing and delete the lock if it is still ours; True when it was."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if self.value is None:
            return False
        try:
            return bool(self._release(keys=[self.key], args=[self.value]))
        finally:
            self.value = None

    def __enter__(self) -> "RedisLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # --- while held ---------------------------------------------------------------
    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` when a renewal found the lock gone or someone else's."""
        if self._lost.is_set():
            raise LeaseLost(f"lost {self.key} (token {self.token}): it expired or was taken over; "
                            "this holder stopped before acting on stale authority")

    def fenced_eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` atomically only while the lock still holds this lease's value.

        The script sees the lock key as ``KEYS[1]``, our value as ``ARGV[1]``, then the
        caller's keys and arguments; it must not be called after :meth:`release`.
        """
        self.check()
        guarded = ("if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end\n"
                   + script)
        try:
            return self.client.eval(guarded, 1 + len(keys), self.key, *keys, self.value, *args)
        except redis.ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                self._lost.set()
                self.check()
            raise

    def _keep_alive(self) -> None:
        period = self.ttl / 3
        while not self._stop.wait(period):
            try:
                if not self._renew(keys=[self.key], args=[self.value, int(self.ttl * 1000)]):
                    self._lost.set()
                    return
            except redis.RedisError:
                continue  # a blip: the next renewal (still within the TTL) tries again

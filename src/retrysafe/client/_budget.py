"""A retry budget per host: a token bucket that retries drain and requests refill (SPEC 23).

Every first attempt deposits ``ratio`` tokens; every retry withdraws one. On top, the bucket
refills at ``floor`` tokens per second, so a host with little traffic can still retry a little.
Retries can therefore add at most ``ratio`` to the request rate (plus the floor) however many
calls fail at once: a failing dependency sees a bounded load instead of a retry storm
(Finagle's RetryBudget; Google SRE book, "Handling Overload"). The bucket holds at most
``burst`` tokens so that a long quiet period does not bank an unbounded storm.

Thread-safe; no I/O; time comes from an injectable monotonic ``clock``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from retrysafe.errors import ConfigurationError

_EPSILON = 1e-9


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RetryBudget:
    """Per-host retry budget. ``RetryBudget(ratio=0.2, floor=10.0)`` are SPEC 23's defaults."""

    def __init__(
        self,
        ratio: float = 0.2,
        floor: float = 10.0,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or floor < 0:
            raise ConfigurationError("ratio and floor must not be negative")
        self.ratio = ratio
        self.floor = floor
        self.burst = burst if burst is not None else max(floor, 1.0)
        if self.burst <= 0:
            raise ConfigurationError("burst must be positive")
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.refused = 0  # retries refused so far, all hosts

    def _bucket(self, host: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = _Bucket(self.burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.floor)
        bucket.updated = now
        return bucket

    def deposit(self, host: str) -> None:
        """A first attempt to ``host``: it earns ``ratio`` of a retry."""
        with self._lock:
            bucket = self._bucket(host)
            bucket.tokens = min(self.burst, bucket.tokens + self.ratio)

    def withdraw(self, host: str) -> bool:
        """Spend one retry on ``host``; False (and nothing spent) when the budget is empty."""
        with self._lock:
            bucket = self._bucket(host)
            if bucket.tokens >= 1.0 - _EPSILON:  # 5 deposits of 0.2 make one retry, exactly
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
                return True
            self.refused += 1
            return False

    def available(self, host: str) -> float:
        """Retries ``host`` could make right now."""
        with self._lock:
            return self._bucket(host).tokens

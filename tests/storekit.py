"""Every store kind the project has, as a :class:`StoreKit` (used by the ``kit`` fixture).

A :class:`StoreKit` hides whether a store's clock can be moved by the test (memory, SQLite: a
fake clock) or is a real server clock (Redis, PostgreSQL: real time passes). Tests express
durations in ``kit.tick`` units and move time with ``kit.advance``, so one test body runs
against every store. New backends register a factory in ``STORE_KINDS``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from onceonly.stores.base import DualStore
from onceonly.stores.memory import MemoryStore
from onceonly.stores.sqlite import SQLiteStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class FakeClock:
    """A store clock that only moves when told to (thread-safe)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class StoreKit:
    """One store under test, plus the means to move its clock and open it again."""

    name: str
    store: DualStore
    advance: Callable[[float], None]
    reopen: Callable[[], DualStore]  # another handle on the same data, as another process would
    tick: float = 1.0  # a "unit" of time for this store: 1 s fake, shorter for real clocks
    real_clock: bool = False
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def _memory(tmp_path: Path) -> StoreKit:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    return StoreKit("memory", store, clock.advance, lambda: store)


def _sqlite(tmp_path: Path) -> StoreKit:
    clock = FakeClock()
    path = tmp_path / "onceonly.db"
    store = SQLiteStore(path, clock=clock)
    opened: list[SQLiteStore] = [store]

    def reopen() -> DualStore:
        again = SQLiteStore(path, clock=clock)
        opened.append(again)
        return again

    kit = StoreKit("sqlite", store, clock.advance, reopen)
    kit.closers.append(lambda: [s.close() for s in opened] and None)
    return kit


# name -> factory(tmp_path) -> StoreKit; a factory calls pytest.skip when its server is absent
STORE_KINDS: dict[str, Callable[[Path], StoreKit]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


def require_service(name: str, reason: str) -> None:
    """Skip when a service is missing on a developer machine; fail loudly in CI."""
    if IN_CI:
        pytest.fail(f"{name} is required in CI but unavailable: {reason}")
    pytest.skip(f"{name} not available ({reason}); start it to run these tests")

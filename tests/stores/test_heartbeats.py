"""Sync heartbeats renew independently: one renewal stuck on a store does not stall the rest.

A SQLite writer holding the database's write lock makes a renewal on that file wait for the
store's busy timeout; meanwhile a claim on another store must keep being renewed on time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from retrysafe.engine import Heartbeat
from retrysafe.policy import Policy
from retrysafe.records import Claimed
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore


class _CountingMemoryStore(MemoryStore):
    """A real memory store that signals once it has renewed ``wanted`` times."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.renewed = 0
        self.reached = threading.Event()
        self._wanted = wanted

    def renew(self, id: str, token: int, lease: float) -> bool:
        ok = super().renew(id, token, lease)
        self.renewed += 1
        if self.renewed >= self._wanted:
            self.reached.set()
        return ok


def _claim(store: MemoryStore | SQLiteStore, id: str) -> int:
    result = store.claim(id, "fp", 10.0)
    assert isinstance(result, Claimed)
    return result.token


def test_a_renewal_blocked_on_one_store_does_not_stall_another(tmp_path: Path) -> None:
    policy = Policy(lease=3.0, heartbeat=0.05)
    path = tmp_path / "locked.db"
    stuck_store = SQLiteStore(path, busy_timeout=5.0)
    stuck_token = _claim(stuck_store, "stuck")
    fine_store = _CountingMemoryStore(wanted=5)
    fine_token = _claim(fine_store, "fine")

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # every other writer now waits up to its busy timeout
    try:
        with Heartbeat(stuck_store, "stuck", stuck_token, policy):
            with Heartbeat(fine_store, "fine", fine_token, policy):
                # five renewals take ~0.25 s; with renewals run one after another they would
                # all wait behind the stuck one for its 5 s busy timeout
                assert fine_store.reached.wait(timeout=3.0), fine_store.renewed
            assert holder.in_transaction  # the lock was held the whole time
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        stuck_store.close()


def test_close_while_another_thread_waits_on_the_store_is_safe(tmp_path: Path) -> None:
    """close() during another thread's operation: that thread's operation still finishes
    (closing its connection under it used to crash the interpreter), then the store reopens."""
    path = tmp_path / "closing.db"
    store = SQLiteStore(path, busy_timeout=5.0)
    token = _claim(store, "k")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    renewed: list[bool] = []
    worker = threading.Thread(target=lambda: renewed.append(store.renew("k", token, 10.0)))
    worker.start()
    try:
        waited = threading.Event()
        while not store._busy and worker.is_alive():  # until the renewal holds its connection
            waited.wait(0.005)
        assert store._busy, "the renewal never started"
        store.close()  # the renewal is blocked on the write lock inside its transaction
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    worker.join(timeout=10)
    assert renewed == [True]
    assert not store._busy  # the renewal is over and closed its connection itself
    assert not store._doomed
    assert store.get("k") is not None  # a new connection after close()
    store.close()

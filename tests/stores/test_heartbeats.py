"""Sync heartbeats renew independently: one renewal stuck on a store does not stall the rest.

A SQLite writer holding the database's write lock makes a renewal on that file wait for the
store's busy timeout; meanwhile a claim on another store must keep being renewed on time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from kit.wakes import HANG, NEVER
from retrysafe._engine import Heartbeat
from retrysafe._policy import Policy
from retrysafe._records import Claimed
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore


class _CountingMemoryStore(MemoryStore):
    """A real memory store that counts its renewals."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed = 0
        self._counted = threading.Condition()

    def renew(self, id: str, token: int, lease: float) -> bool:
        ok = super().renew(id, token, lease)
        with self._counted:
            self.renewed += 1
            self._counted.notify_all()
        return ok

    def wait_renewed(self, count: int) -> bool:
        with self._counted:
            return self._counted.wait_for(lambda: self.renewed >= count, HANG)


class _StuckSQLiteStore(SQLiteStore):
    """A real SQLite store that tells when a renewal begins and how many have returned."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, busy_timeout=NEVER)  # a renewal waits as long as the lock is held
        self.entered = threading.Event()
        self.returned = 0

    def renew(self, id: str, token: int, lease: float) -> bool:
        self.entered.set()
        try:
            return super().renew(id, token, lease)
        finally:
            self.returned += 1


def _claim(store: MemoryStore | SQLiteStore, id: str) -> int:
    result = store.claim(id, "fp", 10.0)
    assert isinstance(result, Claimed)
    return result.token


def test_a_renewal_blocked_on_one_store_does_not_stall_another(tmp_path: Path) -> None:
    policy = Policy(lease=3.0, heartbeat=0.05)
    path = tmp_path / "locked.db"
    stuck_store = _StuckSQLiteStore(path)
    stuck_token = _claim(stuck_store, "stuck")
    fine_store = _CountingMemoryStore()
    fine_token = _claim(fine_store, "fine")

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # every other writer now waits until it is rolled back
    try:
        with Heartbeat(stuck_store, "stuck", stuck_token, policy):
            with Heartbeat(fine_store, "fine", fine_token, policy):
                assert stuck_store.entered.wait(HANG)  # a renewal is stuck on the lock
                now = fine_store.renewed
                assert fine_store.wait_renewed(now + 5), fine_store.renewed
                # all five renewed while the stuck renewal was still blocked: run one after
                # another, they would all have waited behind it
                assert stuck_store.returned == 0
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

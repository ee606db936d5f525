"""Takeover races with real processes on SQLite (SPEC 13, 13a; issue 8).

(A three-phase function killed at each point, on SQLite and PostgreSQL: ``test_chaos.py``.)

- An old holder stopped (SIGSTOP) past its lease: before its first write, a retry takes the
  key over and the old holder is refused with everything rolled back; inside its
  transaction, SQLite's write lock keeps the key its own (the would-be taker gets
  StoreUnavailable) and it commits when it wakes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.atomic_db import SPAWN, recv
from kit.atomic_sqlite_child import LEASE, LEDGER, policy, stalled_holder
from retrysafe.errors import StoreUnavailable
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import idempotent

pytestmark = pytest.mark.slow


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "app.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(LEDGER)
    return str(path)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.join(10)


def _start(procs: list[Any], target: Any, *args: Any) -> Any:
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(*args, theirs), daemon=True)
    proc.start()
    theirs.close()
    procs.append(proc)
    return ours, proc


def _ledger(db: str) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as raw:
        return raw.execute("SELECT key, cents FROM ledger ORDER BY rowid").fetchall()


def test_an_old_holder_waking_after_a_takeover_is_refused_and_rolled_back(
    db: str, procs: list[Any]
) -> None:
    conn, proc = _start(procs, stalled_holder, db, "k", "before_write")
    assert recv(conn) == ("stalling", "k", "before_write")
    os.kill(proc.pid, signal.SIGSTOP)  # its heartbeat stops too: the lease lapses

    store = SQLiteStore(db)
    try:

        @idempotent(store, key=lambda key: key, policy=policy(), atomic=True, namespace="charge1")
        def charge(key: str) -> dict[str, Any]:
            from retrysafe import atomic

            cur = atomic.transaction().execute("INSERT INTO ledger VALUES (?, 200)", (key,))
            return {"key": key, "row": cur.lastrowid}

        # Waits for the lease to lapse (or finds it lapsed already: how long that takes is the
        # machine's business), then takes over; the holder's "taken_over" below proves it.
        mine = charge("k")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    conn.send("go")
    kind, _, detail = recv(conn)
    assert kind == "taken_over", detail
    proc.join(30)
    try:
        assert _ledger(db) == [("k", 200)]  # the new holder's write stands, alone
        assert charge("k") == mine  # and its result replays
    finally:
        store.close()


def test_a_holder_stopped_inside_its_transaction_keeps_the_key(db: str, procs: list[Any]) -> None:
    """SQLite's write lock: no takeover can commit while the holder's transaction is open,
    even long past its lease; the would-be taker fails closed and later replays."""
    conn, proc = _start(procs, stalled_holder, db, "k", "after_write")
    assert recv(conn) == ("stalling", "k", "after_write")
    os.kill(proc.pid, signal.SIGSTOP)
    store = SQLiteStore(db, busy_timeout=0.3)
    try:

        @idempotent(store, key=lambda key: key, policy=policy(), atomic=True, namespace="charge1")
        def charge(key: str) -> dict[str, Any]:
            raise AssertionError("must not run: the stopped holder still holds the key")

        time.sleep(LEASE + 0.1)  # real time: the stopped holder's lease lapses
        with pytest.raises(StoreUnavailable):
            charge("k")
        os.kill(proc.pid, signal.SIGCONT)
        conn.send("go")
        kind, _, theirs = recv(conn)
        assert kind == "done"
        assert charge("k") == theirs
        assert _ledger(db) == [("k", 100)]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        store.close()

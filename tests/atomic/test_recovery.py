"""Recovery points and takeover races with real processes (SPEC 13, 13a; issue 8).

- A three-phase function killed at each point resumes after the last committed phase, and
  the foreign call of a repeated phase carries the same derived key (so the foreign service,
  which keeps one effect per key, deduplicates it).
- An old holder stopped (SIGSTOP) past its lease: before its first write, a retry takes the
  key over and the old holder is refused with everything rolled back; inside its
  transaction, SQLite's write lock keeps the key its own (the would-be taker gets
  StoreUnavailable) and it commits when it wakes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceonly.atomic import DERIVED_KEY_VERSION
from onceonly.errors import StoreUnavailable
from onceonly.keys import derive_key
from onceonly.policy import storage_id
from onceonly.records import State
from onceonly.stores.sqlite import SQLiteStore
from onceonly.tools import idempotent

from ._workers import FOREIGN, LEASE, LEDGER, PHASES, phased_worker, policy, stalled_holder

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")


def _recv(conn: Any, timeout: float = 30.0) -> Any:
    assert conn.poll(timeout), "the worker never answered"
    return conn.recv()


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, str]:
    db, foreign = tmp_path / "app.db", tmp_path / "foreign.db"
    SQLiteStore(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute(LEDGER)
    with sqlite3.connect(foreign) as raw:
        raw.executescript(FOREIGN)
    return str(db), str(foreign)


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


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


# (pause point, the phase a takeover resumes after, the phases it runs)
RESUMES = [
    ("after_reserve", "reserve", ["charge", "receipt"]),
    ("called_charge", "reserve", ["charge", "receipt"]),
    ("after_charge", "charge", ["receipt"]),
    ("called_receipt", "charge", ["receipt"]),
]


@pytest.mark.parametrize(("point", "resumed_at", "ran"), RESUMES)
def test_a_killed_three_phase_call_resumes_after_its_last_committed_phase(
    paths: tuple[str, str], procs: list[Any], point: str, resumed_at: str, ran: list[str]
) -> None:
    db, foreign = paths
    conn, proc = _start(procs, phased_worker, db, foreign)
    assert _recv(conn)[0] == "ready"
    conn.send(("ride-1", point))
    assert _recv(conn) == ("paused", "ride-1", point)
    _kill(proc)

    conn, proc = _start(procs, phased_worker, db, foreign)  # the retry, after the lease
    assert _recv(conn)[0] == "ready"
    conn.send(("ride-1", None))
    kind, _, result = _recv(conn)
    assert kind == "done"
    assert result == {"resumed_at": resumed_at, "ran": ran}

    # Every phase's own write is in the ledger exactly once.
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT key FROM ledger ORDER BY rowid").fetchall()
    assert rows == [(f"ride-1/{phase}",) for phase in PHASES]

    # Foreign calls: a phase repeated by the resumed run re-sent the very same derived key,
    # so the foreign service kept one effect per phase.
    id = storage_id("function\0ride", "ride-1")
    expected = {phase: derive_key(DERIVED_KEY_VERSION, id, phase) for phase in PHASES}
    with sqlite3.connect(foreign) as raw:
        calls = raw.execute("SELECT key, phase FROM calls ORDER BY rowid").fetchall()
        effects = dict(raw.execute("SELECT phase, key FROM effects").fetchall())
    assert effects == expected
    assert all(key == expected[phase] for key, phase in calls)
    repeated = [phase for phase in PHASES if [p for _, p in calls].count(phase) == 2]
    assert repeated == ([point.removeprefix("called_")] if point.startswith("called_") else [])

    store = SQLiteStore(db)
    try:
        record = store.get(id)
    finally:
        store.close()
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.phase is None


def _ledger(db: str) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as raw:
        return raw.execute("SELECT key, cents FROM ledger ORDER BY rowid").fetchall()


def test_an_old_holder_waking_after_a_takeover_is_refused_and_rolled_back(
    paths: tuple[str, str], procs: list[Any]
) -> None:
    db, _ = paths
    conn, proc = _start(procs, stalled_holder, db, "k", "before_write")
    assert _recv(conn) == ("stalling", "k", "before_write")
    os.kill(proc.pid, signal.SIGSTOP)  # its heartbeat stops too: the lease lapses

    store = SQLiteStore(db)
    try:

        @idempotent(store, key=lambda key: key, policy=policy(), atomic=True, namespace="charge1")
        def charge(key: str) -> dict[str, Any]:
            from onceonly import atomic

            cur = atomic.transaction().execute("INSERT INTO ledger VALUES (?, 200)", (key,))
            return {"key": key, "row": cur.lastrowid}

        started = time.monotonic()
        mine = charge("k")  # waits for the lease to lapse, then takes over
        assert time.monotonic() - started >= LEASE * 0.5
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    conn.send("go")
    kind, _, detail = _recv(conn)
    assert kind == "taken_over", detail
    proc.join(30)
    try:
        assert _ledger(db) == [("k", 200)]  # the new holder's write stands, alone
        assert charge("k") == mine  # and its result replays
    finally:
        store.close()


def test_a_holder_stopped_inside_its_transaction_keeps_the_key(
    paths: tuple[str, str], procs: list[Any]
) -> None:
    """SQLite's write lock: no takeover can commit while the holder's transaction is open,
    even long past its lease; the would-be taker fails closed and later replays."""
    db, _ = paths
    conn, proc = _start(procs, stalled_holder, db, "k", "after_write")
    assert _recv(conn) == ("stalling", "k", "after_write")
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
        kind, _, theirs = _recv(conn)
        assert kind == "done"
        assert charge("k") == theirs
        assert _ledger(db) == [("k", 100)]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        store.close()

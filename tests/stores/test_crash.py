"""Processes SIGKILLed while they hold a claim or write records (SPEC 13: leases and fencing).

These use real time and real processes: a dedicated ``SQLiteStore`` on the wall clock with a
short lease, and children started with the spawn context. A child is killed at a known point
(after it reported over a pipe), never after a guessed sleep.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pytest

from kit.store_child import FP, body_for, hold, response_for, storm
from kit.store_claims import new_id
from kit.stores import Stalled, rerun_when_stalled
from retrysafe._records import Claimed, Existing, State, StoredResponse
from retrysafe.stores.sqlite import TABLE, SQLiteStore

pytestmark = pytest.mark.slow

LEASE = 0.5  # seconds of real time
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "crash.db")  # the wall clock, as in production
    yield store
    store.close()


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def _recv(conn: Connection, timeout: float = 30.0) -> Any:
    assert conn.poll(timeout), "the child never reported"
    return conn.recv()


@rerun_when_stalled
def test_a_killed_holder_is_taken_over_after_its_lease_and_fenced_out(
    store: SQLiteStore,
) -> None:
    id = new_id("held-by-the-dead")
    ours, theirs = SPAWN.Pipe()
    child = SPAWN.Process(target=hold, args=(store.path, id, LEASE, theirs))
    child.start()
    try:
        (kind, dead_token, _, _), claiming = _recv(ours)
        assert kind == "claimed"
        _kill(child)  # it is blocked in recv(), still holding the claim
    finally:
        if child.is_alive():
            child.kill()
            child.join()

    # Before the lease lapses, a duplicate sees the dead holder's claim in flight.
    early = store.claim(id, FP, 60.0)
    checked_at = time.time()
    # An upper bound on a real clock: it holds only if the time from before the child's claim
    # to after this one stayed under the lease (else a loaded machine voids it: run again).
    if checked_at - claiming >= LEASE:
        raise Stalled(f"{checked_at - claiming:.2f} s from the child's claim to the check")
    assert isinstance(early, Existing)
    assert (early.record.state, early.record.token) == (State.IN_FLIGHT, dead_token)
    assert checked_at < early.record.lease_until

    # Real time passes until the lease is over (the store's clock is the wall clock).
    time.sleep(max(0.0, early.record.lease_until - time.time()) + 0.02)
    taken = store.claim(id, FP, 60.0)
    assert isinstance(taken, Claimed)
    assert taken.recovered is True
    assert taken.previous_fingerprint == FP
    assert taken.token > dead_token

    # The dead holder's token, had it a late writer, is refused everywhere.
    late = StoredResponse(200, (), b"from beyond")
    assert store.complete(id, dead_token, late, 3600.0, 3600.0) is False
    assert store.renew(id, dead_token, 60.0) is False
    assert store.release(id, dead_token) is False
    record = store.get(id)
    assert record is not None
    assert (record.state, record.token) == (State.IN_FLIGHT, taken.token)

    assert store.complete(id, taken.token, response_for(id), 3600.0, 3600.0)
    replay = store.claim(id, FP, 60.0)
    assert isinstance(replay, Existing)
    assert replay.record.response == response_for(id)
    assert store.complete(id, dead_token, late, 3600.0, 3600.0) is False


STORMERS = 2
ACKS_BEFORE_KILL = 40


def test_killing_writers_mid_storm_leaves_an_intact_database(store: SQLiteStore) -> None:
    """Two processes claim+complete as fast as they can; both are SIGKILLed mid-stream."""
    pipes = [SPAWN.Pipe() for _ in range(STORMERS)]
    children = [
        SPAWN.Process(target=storm, args=(store.path, f"storm{n}", theirs))
        for n, (_, theirs) in enumerate(pipes)
    ]
    acked: list[list[int]] = [[] for _ in range(STORMERS)]
    for child in children:
        child.start()
    try:

        def pump(until: int, which: list[int]) -> None:
            """Read acks until each child in ``which`` has ``until`` of them."""
            deadline = time.monotonic() + 60
            while any(len(acked[n]) < until for n in which):
                assert time.monotonic() < deadline, f"stormers stalled: {list(map(len, acked))}"
                ready = wait([pipes[n][0] for n in which], timeout=1)
                for n in which:
                    if pipes[n][0] in ready:
                        acked[n].append(pipes[n][0].recv())

        def drain(n: int) -> None:
            """Read the acks a killed child sent before it died (still in the pipe)."""
            while pipes[n][0].poll(0):
                try:
                    acked[n].append(pipes[n][0].recv())
                except EOFError:
                    return

        pump(ACKS_BEFORE_KILL, [0, 1])
        _kill(children[0])
        drain(0)
        # The survivor keeps going: a writer killed inside a transaction does not wedge the
        # file (SQLite's locks die with the process).
        pump(len(acked[1]) + ACKS_BEFORE_KILL, [1])
        _kill(children[1])
        drain(1)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()

    raw = sqlite3.connect(store.path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = raw.execute(f"SELECT id, state, token, status FROM {TABLE}").fetchall()
    finally:
        raw.close()

    by_id = {row[0]: row for row in rows}
    for n in range(STORMERS):
        last = acked[n][-1]
        assert acked[n] == list(range(last + 1)), "acks out of order or lost"
        # Every acknowledged completion is durable and intact, byte for byte.
        for i in acked[n]:
            id = f"storm{n}-{i}"
            record = store.get(id)
            assert record is not None, f"acknowledged {id} is gone"
            assert record.state is State.COMPLETED
            assert record.response == response_for(id)
        # Past the last ack there is at most the one id the child was working on when killed.
        beyond = sorted(int(id.rsplit("-", 1)[1]) for id in by_id if id.startswith(f"storm{n}-"))
        assert beyond[: last + 1] == list(range(last + 1))
        assert beyond[last + 1 :] in ([], [last + 1])

    # Every row is in a legal state, with a response exactly when completed.
    legal = {State.IN_FLIGHT.value, State.COMPLETED.value}
    for id, state, token, status in rows:
        assert state in legal, (id, state)
        assert isinstance(token, int)
        assert token > 0
        record = store.get(id)
        assert record is not None
        if state == State.COMPLETED.value:
            assert status == 201
            assert record.response is not None
            assert record.response.body == body_for(id)
        else:
            assert status is None
            assert record.response is None

    # And the file still works for everyone.
    fresh = store.claim("after-the-storm", FP, 60.0)
    assert isinstance(fresh, Claimed)
    assert store.complete("after-the-storm", fresh.token, response_for("x"), 60.0, 60.0)

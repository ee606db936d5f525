"""Exactly once under SIGKILL (SPEC 13a, issue 8): real worker processes killed mid-traffic.

A worker process charges through a real door (``@idempotent`` or the WSGI middleware) on a
SQLite file; the charge is a ledger row in the same file. The parent is the client: it sends
every logical charge with its own key and retries the same key until it gets an answer. Each
run kills the worker many times - at named points (before the write, after the write but
before the commit, after the commit) and at random moments - and restarts it.

With atomic completion, every key ends with exactly one ledger row and a completed record
that names that row. Without it, a kill after the write and before completion makes the
retry charge again: the contrast test shows that hole deterministically, so we know the chaos
test could see a double charge if there were one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from onceonly.policy import storage_id
from onceonly.records import State
from onceonly.stores.sqlite import SQLiteStore
from onceonly.tools.serializer import DEFAULT_SERIALIZER

from ._workers import LEDGER, charge_worker

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
POINTS = ("before_write", "after_write", "after_commit")


def _recv(conn: Any, timeout: float = 30.0) -> Any:
    assert conn.poll(timeout), "the worker never answered"
    return conn.recv()


@dataclass
class Worker:
    """One worker process and our end of its pipe; restarted after every kill."""

    path: str
    door: str
    atomic: bool
    target: Any = charge_worker
    kills: int = 0
    proc: Any = None
    conn: Any = None
    spawned: list[Any] = field(default_factory=list)

    def start(self) -> None:
        ours, theirs = SPAWN.Pipe()
        self.proc = SPAWN.Process(
            target=self.target, args=(self.path, self.door, self.atomic, theirs), daemon=True
        )
        self.proc.start()
        theirs.close()
        self.conn = ours
        self.spawned.append(self.proc)
        assert _recv(self.conn)[0] == "ready"

    def kill(self) -> list[Any]:
        """SIGKILL the worker; returns what it had sent before dying (still in the pipe)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(30)
        assert self.proc.exitcode == -signal.SIGKILL
        self.kills += 1
        left = []
        while self.conn.poll(0):
            try:
                left.append(self.conn.recv())
            except (EOFError, OSError):  # a reset: it died with our job unread; we retry
                break
        self.conn.close()
        self.start()
        return left

    def stop(self) -> None:
        for proc in self.spawned:
            if proc.is_alive():
                proc.kill()
                proc.join(10)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "ledger.db"
    SQLiteStore(path).close()  # the store's tables, next to the application's
    with sqlite3.connect(path) as raw:
        raw.execute(LEDGER)
    return str(path)


def ledger_rows(path: str) -> dict[str, list[int]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT rowid, key FROM ledger ORDER BY rowid").fetchall()
    out: dict[str, list[int]] = {}
    for rowid, key in rows:
        out.setdefault(key, []).append(rowid)
    return out


def record_of(store: SQLiteStore, door: str, key: str) -> Any:
    id = storage_id("function\0charge", key) if door == "function" else None
    if id is None:  # the middleware's default scope: no Authorization header
        from onceonly.policy import Policy

        id = storage_id(Policy().scope(_facts()), key)
    return store.get(id)


def _facts() -> Any:
    from onceonly.fingerprint import RequestFacts

    return RequestFacts("POST", "/charges", "", (), b"")


def charge_until_answered(
    worker: Worker, key: str, cents: int, pause: str | None, timer_kill: float | None, db: str
) -> dict[str, Any]:
    """Send one logical charge and retry the same key until the worker answers it."""
    attempt = 0
    while True:
        worker.conn.send((key, cents, pause if attempt == 0 else None))
        if timer_kill is not None and attempt == 0:
            time.sleep(timer_kill)  # a kill at a random moment: anywhere in the request
            left = worker.kill()
            done = [m for m in left if m[0] == "done" and m[1] == key]
            if done:
                return dict(done[0][2])
            attempt += 1
            continue
        kind, got_key, payload = _recv(worker.conn)
        assert got_key == key
        if kind == "done":
            return dict(payload)
        assert kind == "paused"
        left = worker.kill()
        assert not left
        _check_after_kill(worker, key, payload, db)
        attempt += 1


def _check_after_kill(worker: Worker, key: str, point: str, db: str) -> None:
    """A kill before the commit leaves neither the side effect nor the completion; after the
    commit, both (only meaningful with atomic completion)."""
    if not worker.atomic:
        return
    store = SQLiteStore(db)
    try:
        record = record_of(store, worker.door, key)
    finally:
        store.close()
    rows = ledger_rows(db).get(key, [])
    assert record is not None
    if point == "after_commit":
        assert record.state is State.COMPLETED
        assert rows
        assert len(rows) == 1
    else:
        assert record.state is State.IN_FLIGHT
        assert rows == []


def run_chaos(
    db: str, door: str, atomic: bool, keys: int, seed: int, clients: int = 2
) -> tuple[list[Worker], dict[str, dict[str, Any]]]:
    """``clients`` threads, each with its own worker process, charge ``keys`` keys each
    while their workers are killed: at every named point twice, and six times at random."""
    rng = random.Random(seed)
    workers = [Worker(db, door, atomic) for _ in range(clients)]
    answers: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def client(n: int, worker: Worker, plan: list[tuple[str | None, float | None]]) -> None:
        try:
            worker.start()
            for i, (pause, timer) in enumerate(plan):
                key = f"charge-{seed}-{n}-{i}"
                answers[key] = charge_until_answered(worker, key, 100 + i, pause, timer, db)
        except BaseException as exc:
            errors.append(exc)

    threads = []
    for n, worker in enumerate(workers):
        plan: list[tuple[str | None, float | None]] = [(p, None) for p in POINTS for _ in "ab"]
        plan += [(None, rng.uniform(0.0, 0.006)) for _ in range(6)]
        plan += [(None, None)] * (keys - len(plan))
        rng.shuffle(plan)
        threads.append(threading.Thread(target=client, args=(n, worker, plan)))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for worker in workers:
            worker.stop()
    if errors:
        raise errors[0]
    return workers, answers


@pytest.mark.parametrize("door", ["function", "wsgi", "asgi"])
def test_every_charge_is_in_the_ledger_exactly_once_despite_sigkills(db: str, door: str) -> None:
    started = time.monotonic()
    seed = {"function": 13, "wsgi": 8, "asgi": 21}[door]
    workers, answers = run_chaos(db, door, atomic=True, keys=30, seed=seed)
    # Per worker: six kills at named points, six at random moments (plus kills of retries).
    assert all(worker.kills >= 12 for worker in workers)
    assert len(answers) == 60

    rows = ledger_rows(db)
    assert sorted(rows) == sorted(answers), "a charge is missing or unexpected"
    doubled = {key: ids for key, ids in rows.items() if len(ids) != 1}
    assert doubled == {}, f"charged more than once: {doubled}"

    store = SQLiteStore(db)
    try:
        for key, answer in answers.items():
            # The client's answer names the one row, and the record replays the same answer.
            assert answer == {"key": key, "row": rows[key][0]}
            record = record_of(store, door, key)
            assert record is not None
            assert record.state is State.COMPLETED
            assert record.response is not None
            stored = (
                DEFAULT_SERIALIZER.loads(record.response.body)
                if door == "function"
                else json.loads(record.response.body)
            )
            assert stored == answer
            assert record.phase is None
    finally:
        store.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        states = raw.execute("SELECT DISTINCT state FROM onceonly_records").fetchall()
    assert states == [("completed",)]
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("door", ["function", "wsgi", "asgi"])
def test_without_atomic_completion_a_kill_after_the_write_charges_twice(db: str, door: str) -> None:
    """The hole SPEC 13a closes, shown deterministically: the write committed on its own, the
    worker dies before completing the record, and the retry (after the lease) runs again."""
    worker = Worker(db, door, atomic=False)
    worker.start()
    try:
        answer = charge_until_answered(worker, "hole", 100, "after_write", None, db)
    finally:
        worker.stop()
    assert worker.kills == 1
    rows = ledger_rows(db)
    assert len(rows["hole"]) == 2, "the plain path should have charged twice"
    assert answer == {"key": "hole", "row": rows["hole"][1]}


@pytest.mark.parametrize("door", ["function", "wsgi", "asgi"])
def test_with_atomic_completion_the_same_kill_charges_once(db: str, door: str) -> None:
    worker = Worker(db, door, atomic=True)
    worker.start()
    try:
        answer = charge_until_answered(worker, "hole", 100, "after_write", None, db)
    finally:
        worker.stop()
    assert worker.kills == 1
    rows = ledger_rows(db)
    assert rows == {"hole": [answer["row"]]}

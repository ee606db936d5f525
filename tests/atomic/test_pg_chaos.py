"""Exactly once under SIGKILL on PostgreSQL (SPEC 13a, issue 8): real worker processes.

A worker process charges through ``@idempotent`` on a PostgreSQL store; the charge is a ledger
row in the same database. The parent is the client: it sends each logical charge with its own
key and retries the same key (on a fresh worker) until it gets an answer. Kills land at named
points, reported over a pipe, so each one is deterministic: before the write, after the write
but before the commit (the hole), after the commit. A killed worker's connection dies with it,
and the server rolls its open transaction back and releases its row lock.

Without atomic completion the kill after the write charges twice (the contrast: the test could
see a double charge); with it, every key is in the ledger exactly once. A three-phase function
killed in each phase resumes after its last committed recovery point.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from onceonly.atomic import DERIVED_KEY_VERSION
from onceonly.keys import derive_key
from onceonly.policy import storage_id
from onceonly.records import State

from ._pg import PgDb, make_db
from ._pg_workers import PHASES, charge_worker, phased_worker

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def db() -> Iterator[PgDb]:
    for made in make_db():
        with psycopg.connect(made.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {made.prefix}calls (key text NOT NULL, phase text)")
            conn.execute(f"CREATE TABLE {made.prefix}effects (key text PRIMARY KEY, phase text)")
        try:
            yield made
        finally:
            with psycopg.connect(made.url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE {made.prefix}calls, {made.prefix}effects")


def _recv(conn: Any, timeout: float = 30.0) -> Any:
    assert conn.poll(timeout), "the worker never answered"
    return conn.recv()


@dataclass
class Worker:
    """One worker process and our end of its pipe; a fresh one after every kill."""

    db: PgDb
    mode: str
    target: Any = charge_worker
    kills: int = 0
    proc: Any = None
    conn: Any = None
    spawned: list[Any] = field(default_factory=list)

    def start(self) -> None:
        ours, theirs = SPAWN.Pipe()
        args = (self.db.url, self.db.prefix, self.mode, theirs)
        self.proc = SPAWN.Process(target=self.target, args=args, daemon=True)
        self.proc.start()
        theirs.close()
        self.conn = ours
        self.spawned.append(self.proc)
        assert _recv(self.conn)[0] == "ready"

    def kill(self) -> list[Any]:
        """SIGKILL the worker and start a fresh one; returns what it sent before dying."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(30)
        assert self.proc.exitcode == -signal.SIGKILL
        self.kills += 1
        left = []
        while self.conn.poll(0):
            try:
                left.append(self.conn.recv())
            except (EOFError, OSError):  # it died with our job unread: we retry it
                break
        self.conn.close()
        self.start()
        return left

    def send(self, key: str, pause: str | None) -> Any:
        self.conn.send((key, 100, pause))
        return _recv(self.conn)

    def stop(self) -> None:
        for proc in self.spawned:
            if proc.is_alive():
                proc.kill()
                proc.join(10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.stop()


def _worker(workers: list[Worker], db: PgDb, mode: str, target: Any = charge_worker) -> Worker:
    worker = Worker(db, mode, target)
    workers.append(worker)
    worker.start()
    return worker


def _charges(db: PgDb) -> dict[str, list[int]]:
    with psycopg.connect(db.url, autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, key FROM {db.ledger_table} ORDER BY id").fetchall()
    out: dict[str, list[int]] = {}
    for id, key in rows:
        out.setdefault(str(key), []).append(int(id))
    return out


def _record(db: PgDb, namespace: str, key: str) -> Any:
    return db.store.get(storage_id(f"function\0{namespace}", key))


def charge_killed_at(worker: Worker, key: str, point: str) -> dict[str, Any]:
    """Send ``key``, SIGKILL the worker at ``point``, then retry until answered."""
    assert worker.send(key, point) == ("paused", key, point)
    worker.kill()
    if worker.mode != "plain":
        record, rows = _record(worker.db, "charge", key), _charges(worker.db).get(key, [])
        assert record is not None
        if point == "after_commit":  # both or neither: never one without the other
            assert (record.state, len(rows)) == (State.COMPLETED, 1)
        else:
            assert (record.state, rows) == (State.IN_FLIGHT, [])
    kind, got, result = worker.send(key, None)  # waits out the dead holder's lease
    assert (kind, got) == ("done", key)
    return dict(result)


def test_without_atomic_completion_a_kill_after_the_write_charges_twice(
    db: PgDb, workers: list[Worker]
) -> None:
    """The hole SPEC 13a closes, shown deterministically: the charge committed on its own
    connection, the worker died before completing the record, the retry charged again."""
    worker = _worker(workers, db, "plain")
    answer = charge_killed_at(worker, "hole", "after_write")
    rows = _charges(db)["hole"]
    assert len(rows) == 2, "the plain path should have charged twice"
    assert answer == {"key": "hole", "row": rows[1]}


@pytest.mark.parametrize("mode", ["atomic", "aatomic", "sqla", "asqla"])
def test_with_atomic_completion_every_kill_leaves_exactly_one_charge(
    db: PgDb, workers: list[Worker], mode: str
) -> None:
    worker = _worker(workers, db, mode)
    answers = {
        point: charge_killed_at(worker, point, point)
        for point in ("before_write", "after_write", "after_commit")
    }
    kind, _, calm = worker.send("calm", None)
    assert kind == "done"
    assert worker.kills == 3
    charges = _charges(db)
    assert charges == {key: [answer["row"]] for key, answer in [*answers.items(), ("calm", calm)]}
    for key in charges:
        record = _record(db, "charge", key)
        assert record is not None
        assert record.state is State.COMPLETED


def charge_killed_after(worker: Worker, key: str, delay: float) -> dict[str, Any]:
    """Send ``key``, SIGKILL the worker ``delay`` s later wherever it is, retry until answered."""
    worker.conn.send((key, 100, None))
    time.sleep(delay)  # the point of a random kill: anywhere in the request
    done = [m for m in worker.kill() if m[0] == "done" and m[1] == key]
    if done:
        return dict(done[0][2])
    kind, got, result = worker.send(key, None)
    assert (kind, got) == ("done", key)
    return dict(result)


def test_chaos_two_workers_killed_mid_traffic_charge_every_key_once(
    db: PgDb, workers: list[Worker]
) -> None:
    """Two workers (sync and async functions) serve a client each; a third of the charges are
    killed at a named point or at a random moment. Every key ends with one ledger row, the
    one its answer names, and a completed record."""
    rng = random.Random(8)
    answers: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def client(worker: Worker, plan: list[str | float | None]) -> None:
        try:
            for i, how in enumerate(plan):
                key = f"{worker.mode}-{i}"
                if isinstance(how, str):
                    answers[key] = charge_killed_at(worker, key, how)
                elif isinstance(how, float):
                    answers[key] = charge_killed_after(worker, key, how)
                else:
                    kind, _, answers[key] = worker.send(key, None)
                    assert kind == "done"
        except BaseException as exc:
            errors.append(exc)

    threads = []
    for mode in ("atomic", "aatomic"):
        plan: list[str | float | None] = ["after_write", "after_commit"]
        plan += [rng.uniform(0.0, 0.01) for _ in range(2)] + [None] * 8
        rng.shuffle(plan)
        threads.append(threading.Thread(target=client, args=(_worker(workers, db, mode), plan)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert sum(worker.kills for worker in workers) == 8
    assert _charges(db) == {key: [answer["row"]] for key, answer in answers.items()}
    assert len(answers) == 24
    for key in answers:
        record = _record(db, "charge", key)
        assert record is not None
        assert record.state is State.COMPLETED


RESUMES = [
    ("after_reserve", "reserve", ["charge", "receipt"]),
    ("called_charge", "reserve", ["charge", "receipt"]),
    ("after_charge", "charge", ["receipt"]),
    ("called_receipt", "charge", ["receipt"]),
]


@pytest.mark.parametrize(("point", "resumed_at", "ran"), RESUMES)
def test_a_killed_three_phase_call_resumes_after_its_last_committed_phase(
    db: PgDb, workers: list[Worker], point: str, resumed_at: str, ran: list[str]
) -> None:
    worker = _worker(workers, db, "atomic", phased_worker)
    assert worker.send("ride", point) == ("paused", "ride", point)
    worker.kill()
    assert worker.send("ride", None) == ("done", "ride", {"resumed_at": resumed_at, "ran": ran})

    # Every phase's own write is in the ledger exactly once.
    assert list(_charges(db)) == [f"ride/{phase}" for phase in PHASES]
    assert all(len(rows) == 1 for rows in _charges(db).values())
    # A phase repeated by the resumed run re-sent the same derived key to the foreign service.
    id = storage_id("function\0ride", "ride")
    expected = {phase: derive_key(DERIVED_KEY_VERSION, id, phase) for phase in PHASES}
    with psycopg.connect(db.url, autocommit=True) as conn:
        calls = conn.execute(f"SELECT key, phase FROM {db.prefix}calls").fetchall()
        effects = dict(conn.execute(f"SELECT phase, key FROM {db.prefix}effects").fetchall())
    assert effects == expected
    assert all(key == expected[phase] for key, phase in calls)
    repeated = [phase for phase in PHASES if [p for _, p in calls].count(phase) == 2]
    assert repeated == ([point.removeprefix("called_")] if point.startswith("called_") else [])
    record = db.store.get(id)
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.phase is None

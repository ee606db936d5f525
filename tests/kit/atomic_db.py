"""One kit per database for the SIGKILL tests, so each scenario is written once.

A kit says how to start a worker process on its database (``atomic_sqlite_child.py`` on a
SQLite file, ``atomic_pg_child.py`` on PostgreSQL tables with a unique prefix) and how to read
what a crash left behind: the ledger, the records, the foreign service's calls. Every worker
reads the same ``(key, cents, pause)`` jobs from its pipe, so :class:`Worker` drives any of
them.

Doors: the way a charge reaches retrysafe inside the worker. ``function`` is ``@idempotent``
on both databases (atomic or not); SQLite adds the WSGI and ASGI middlewares, PostgreSQL an
async function and SQLAlchemy's sync and async engines.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kit import atomic_pg_child, atomic_sqlite_child
from kit.atomic_pg import PgDb, make_db
from retrysafe._fingerprint import RequestFacts
from retrysafe._keyring import configured_secret
from retrysafe._policy import storage_id
from retrysafe._records import Record, State
from retrysafe._scopes import PrincipalKey, shared_scope
from retrysafe.stores.sqlite import SQLiteStore

SPAWN = multiprocessing.get_context("spawn")
NAMED_POINTS = ("before_write", "after_write", "after_commit")


class DbKit:
    """What a scenario needs from one database."""

    name: str
    charge_target: Callable[..., None]
    phased_target: Callable[..., None]

    def charge_args(self, door: str, atomic: bool) -> tuple[Any, ...]:
        """The worker's arguments before its pipe end."""
        raise NotImplementedError

    def phased_args(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def charges(self) -> dict[str, list[int]]:
        """Committed ledger rows: key -> row ids, in commit order."""
        raise NotImplementedError

    def get(self, id: str) -> Record | None:
        raise NotImplementedError

    def foreign(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """The foreign service's log: every call ``(key, phase)`` and its effects by phase."""
        raise NotImplementedError

    def states(self) -> list[str]:
        """The distinct states of all records in the store."""
        raise NotImplementedError

    def check_intact(self) -> None:
        """Whatever the database can say about its own integrity after the kills."""

    def record(self, door: str, key: str, namespace: str = "charge") -> Record | None:
        """The record of ``key`` as ``door`` stored it."""
        return self.get(record_id(door, key, namespace))


def record_id(door: str, key: str, namespace: str = "charge") -> str:
    """The storage id under which ``door`` keeps the charge ``key``."""
    if door in ("wsgi", "asgi", "asgi-async"):  # the middleware, shared_scope (no credentials)
        principal = shared_scope(RequestFacts("POST", "/charges", "", (), b""))
        secret = configured_secret(None)  # the suite's RETRYSAFE_SECRET, which workers inherit
        assert principal is not None
        assert secret is not None
        return storage_id(PrincipalKey(secret).id_of(principal), key)
    return storage_id(f"function\0{namespace}", key)


def _by_key(rows: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for id, key in rows:
        out.setdefault(str(key), []).append(int(id))
    return out


@dataclass
class SQLiteKit(DbKit):
    """A SQLite file holding the store and the ledger; the foreign service in another file."""

    path: str
    foreign_path: str
    name = "sqlite"
    charge_target = staticmethod(atomic_sqlite_child.charge_worker)
    phased_target = staticmethod(atomic_sqlite_child.phased_worker)

    @classmethod
    def make(cls, tmp_path: Path) -> SQLiteKit:
        path, foreign = tmp_path / "ledger.db", tmp_path / "foreign.db"
        SQLiteStore(path).close()  # the store's tables, next to the application's
        with sqlite3.connect(path) as raw:
            raw.execute(atomic_sqlite_child.LEDGER)
        with sqlite3.connect(foreign) as raw:
            raw.executescript(atomic_sqlite_child.FOREIGN)
        return cls(str(path), str(foreign))

    def charge_args(self, door: str, atomic: bool) -> tuple[Any, ...]:
        return (self.path, door, atomic)

    def phased_args(self) -> tuple[Any, ...]:
        return (self.path, self.foreign_path)

    def charges(self) -> dict[str, list[int]]:
        with sqlite3.connect(self.path) as raw:
            return _by_key(raw.execute("SELECT rowid, key FROM ledger ORDER BY rowid").fetchall())

    def get(self, id: str) -> Record | None:
        store = SQLiteStore(self.path)
        try:
            return store.get(id)
        finally:
            store.close()

    def foreign(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        with sqlite3.connect(self.foreign_path) as raw:
            calls = raw.execute("SELECT key, phase FROM calls ORDER BY rowid").fetchall()
            effects = dict(raw.execute("SELECT phase, key FROM effects").fetchall())
        return calls, effects

    def states(self) -> list[str]:
        with sqlite3.connect(self.path) as raw:
            rows = raw.execute("SELECT DISTINCT state FROM retrysafe_records").fetchall()
        return [str(r[0]) for r in rows]

    def check_intact(self) -> None:
        with sqlite3.connect(self.path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@dataclass
class PostgresKit(DbKit):
    """Tables with a unique prefix in the shared database; the foreign service's too."""

    pg: PgDb
    name = "postgres"
    charge_target = staticmethod(atomic_pg_child.charge_worker)
    phased_target = staticmethod(atomic_pg_child.phased_worker)

    def _query(self, sql: str) -> list[Any]:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            return conn.execute(sql.format(p=self.pg.prefix)).fetchall()

    def charge_args(self, door: str, atomic: bool) -> tuple[Any, ...]:
        # The worker's modes: the door when atomic; only @idempotent has a plain one.
        mode = {"function": "atomic", "afunction": "aatomic"}.get(door, door)
        if not atomic:
            assert door == "function", f"no plain mode for {door} on PostgreSQL"
            mode = "plain"
        return (self.pg.url, self.pg.prefix, mode)

    def phased_args(self) -> tuple[Any, ...]:
        return (self.pg.url, self.pg.prefix, "atomic")

    def charges(self) -> dict[str, list[int]]:
        return _by_key(self._query("SELECT id, key FROM {p}ledger ORDER BY id"))

    def get(self, id: str) -> Record | None:
        return self.pg.store.get(id)

    def foreign(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        calls = [(str(k), str(p)) for k, p in self._query("SELECT key, phase FROM {p}calls")]
        effects = {str(p): str(k) for p, k in self._query("SELECT phase, key FROM {p}effects")}
        return calls, effects

    def states(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT DISTINCT state FROM {p}records")]


def _postgres_kit() -> Iterator[PostgresKit]:
    for made in make_db():
        with psycopg.connect(made.url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {made.prefix}calls (key text NOT NULL, phase text)")
            conn.execute(f"CREATE TABLE {made.prefix}effects (key text PRIMARY KEY, phase text)")
        try:
            yield PostgresKit(made)
        finally:
            with psycopg.connect(made.url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE {made.prefix}calls, {made.prefix}effects")


@pytest.fixture(params=["sqlite", "postgres"])
def dbkit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbKit]:
    """A fresh database of the kind named by the parameter (directly or ``indirect``)."""
    if request.param == "sqlite":
        yield SQLiteKit.make(tmp_path)
    else:
        yield from _postgres_kit()


def recv(conn: Any, timeout: float = 30.0) -> Any:
    assert conn.poll(timeout), "the worker never answered"
    return conn.recv()


@dataclass
class Worker:
    """One worker process and our end of its pipe; a fresh one after every kill."""

    # A SQLite path, or anything with a PostgreSQL ``url`` and table ``prefix`` (a PgDb):
    # taken as their kit.
    kit: DbKit | str | PgDb
    door: str = "function"  # on PostgreSQL also a mode of ``atomic_pg_child.charge_worker``
    atomic: bool = True
    target: Callable[..., None] | None = None  # another charging worker, same arguments
    kills: int = 0
    proc: Any = None
    conn: Any = None
    spawned: list[Any] = field(default_factory=list)
    phased: bool = False  # the three-phase worker instead of the charging one

    def __post_init__(self) -> None:
        if isinstance(self.kit, str):
            self.kit = SQLiteKit(self.kit, "")
        elif not isinstance(self.kit, DbKit):
            self.kit = PostgresKit(self.kit)

    @property
    def db(self) -> DbKit:
        assert isinstance(self.kit, DbKit)
        return self.kit

    def start(self) -> None:
        ours, theirs = SPAWN.Pipe()
        if self.phased:
            target, args = self.db.phased_target, self.db.phased_args()
        else:
            target = self.target or self.db.charge_target
            args = self.db.charge_args(self.door, self.atomic)
        self.proc = SPAWN.Process(target=target, args=(*args, theirs), daemon=True)
        self.proc.start()
        theirs.close()
        self.conn = ours
        self.spawned.append(self.proc)
        assert recv(self.conn)[0] == "ready"

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

    def send(self, key: str, pause: str | None, cents: int = 100) -> Any:
        self.conn.send((key, cents, pause))
        return recv(self.conn)

    def stop(self) -> None:
        for proc in self.spawned:
            if proc.is_alive():
                proc.kill()
                proc.join(10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test started (through :func:`start`); stopped when it ends."""
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.stop()


def start(workers: list[Worker], kit: DbKit, door: str = "function", **kw: Any) -> Worker:
    worker = Worker(kit, door, **kw)
    workers.append(worker)
    worker.start()
    return worker


def check_after_kill(worker: Worker, key: str, point: str) -> None:
    """With atomic completion a kill leaves both the charge and the completion or neither."""
    if not worker.atomic:
        return
    record = worker.db.record(worker.door, key)
    rows = worker.db.charges().get(key, [])
    assert record is not None
    if point == "after_commit":
        assert (record.state, len(rows)) == (State.COMPLETED, 1)
    else:
        assert (record.state, rows) == (State.IN_FLIGHT, [])


def charge_killed_at(worker: Worker, key: str, point: str, cents: int = 100) -> dict[str, Any]:
    """Send ``key``, SIGKILL the worker at ``point``, then retry until answered."""
    assert worker.send(key, point, cents) == ("paused", key, point)
    assert worker.kill() == []
    check_after_kill(worker, key, point)
    kind, got, result = worker.send(key, None, cents)  # waits out the dead holder's lease
    assert (kind, got) == ("done", key)
    return dict(result)


def charge_killed_after(worker: Worker, key: str, delay: float, cents: int = 100) -> dict[str, Any]:
    """Send ``key``, SIGKILL the worker ``delay`` s later wherever it is, retry until answered."""
    worker.conn.send((key, cents, None))
    time.sleep(delay)  # the point of a random kill: anywhere in the request
    done = [m for m in worker.kill() if m[0] == "done" and m[1] == key]
    if done:
        return dict(done[0][2])
    kind, got, result = worker.send(key, None, cents)
    assert (kind, got) == ("done", key)
    return dict(result)


def charge_until_answered(
    worker: Worker,
    key: str,
    cents: int,
    pause: str | None,
    timer_kill: float | None,
    db: Any = None,
) -> dict[str, Any]:
    """Send one logical charge - killed at ``pause``, or ``timer_kill`` seconds in - and retry
    the same key until the worker answers it. (``db`` is unused: the worker's kit has it.)"""
    if pause is not None:
        return charge_killed_at(worker, key, pause, cents)
    if timer_kill is not None:
        return charge_killed_after(worker, key, timer_kill, cents)
    kind, got, result = worker.send(key, None, cents)
    assert (kind, got) == ("done", key)
    return dict(result)


def ledger_rows(path: str) -> dict[str, list[int]]:
    """The ledger of a SQLite file: key -> row ids."""
    return SQLiteKit(path, "").charges()

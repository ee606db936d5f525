"""Atomic completion through async SQLAlchemy on a SQLite file (aiosqlite dialect, SPEC 13a).

The application's ``AsyncEngine`` and the store share one file. aiosqlite keeps each
connection on a thread of its own; the unit runs its steps there, on the application's own
connection, so the writes and the record commit with one COMMIT. A worker process SIGKILLed
before the write, after it and after the commit still charges every key exactly once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kit.atomic_aiosqlite_child import aiosqlite_worker
from kit.atomic_db import NAMED_POINTS, Worker, charge_killed_at
from kit.atomic_sqlalchemy import Base, Charge
from kit.atomic_sqlite_child import LEDGER
from retrysafe import atomic
from retrysafe._policy import storage_id
from retrysafe._records import Claimed, State
from retrysafe.atomic import sqlalchemy as sa_atomic
from retrysafe.errors import ClaimTakenOver, ConfigurationError, ForeignConnection
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import idempotent


@pytest.fixture
async def aengine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    async with made.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield made
    await made.dispose()


@pytest.fixture
def store(aengine: AsyncEngine) -> Iterator[SQLiteStore]:
    assert aengine.url.database is not None
    made = SQLiteStore(aengine.url.database)
    yield made
    made.close()


def charges(store: SQLiteStore) -> list[tuple[str, int]]:
    """Committed rows, read on a connection of their own (what a crash would leave)."""
    with sqlite3.connect(store.path) as raw:
        return [(str(o), int(c)) for o, c in raw.execute('SELECT "order", cents FROM charges')]


def record_state(store: SQLiteStore, key: str) -> State | None:
    record = store.get(storage_id("function\0charge", key))
    return None if record is None else record.state


async def test_orm_and_core_writes_commit_with_the_record_in_one_commit(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    runs: list[str] = []
    statements: list[str] = []

    @idempotent(store, key=lambda order: order, atomic=True, namespace="charge")
    async def charge(order: str) -> int:
        runs.append(order)
        session = await sa_atomic.asession(aengine)
        assert await sa_atomic.asession(aengine) is session  # one session per execution
        conn = await sa_atomic.aconnection(aengine)
        assert await session.connection() is conn
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.set_trace_callback(statements.append)  # what reaches SQLite from here on
        session.add(Charge(order=order, cents=100))
        await session.commit()  # harmless: the record's COMMIT is the real one
        await conn.execute(insert(Charge).values(order=f"{order}-core", cents=1))
        session.add(Charge(order=f"{order}-late", cents=2))  # flushed before completion
        return len(runs)

    assert await charge("o1") == 1
    assert await charge("o1") == 1  # replayed
    assert runs == ["o1"]
    assert sorted(charges(store)) == [("o1", 100), ("o1-core", 1), ("o1-late", 2)]
    assert record_state(store, "o1") is State.COMPLETED
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert commits == ["COMMIT"]  # one, after every write and the record's completion
    last_write = max(i for i, s in enumerate(statements) if s.startswith(("INSERT", "UPDATE")))
    assert statements.index("COMMIT") > last_write
    assert any("retrysafe_records" in s for s in statements[: last_write + 1])


async def test_an_exception_rolls_back_both_and_releases(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    attempts: list[int] = []

    @idempotent(store, key="o2", atomic=True, namespace="charge")
    async def charge() -> int:
        attempts.append(1)
        conn = await sa_atomic.aconnection(aengine)
        await conn.execute(insert(Charge).values(order="o2", cents=7))
        if len(attempts) == 1:
            raise RuntimeError("after the write")
        return int((await conn.execute(select(func.count()).select_from(Charge))).scalar_one())

    with pytest.raises(RuntimeError):
        await charge()
    assert charges(store) == []
    assert record_state(store, "o2") is None  # released
    assert await charge() == 1
    assert charges(store) == [("o2", 7)]


async def test_a_flush_error_is_the_handlers_error(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    with sqlite3.connect(store.path) as raw:
        raw.execute("INSERT INTO charges (\"order\", cents) VALUES ('taken', 1)")

    @idempotent(store, key="dup", atomic=True, namespace="charge")
    async def charge() -> str:
        (await sa_atomic.asession(aengine)).add(Charge(order="taken", cents=2))
        return "never stored"

    with pytest.raises(IntegrityError):
        await charge()
    assert charges(store) == [("taken", 1)]
    assert record_state(store, "dup") is None


async def test_a_user_rollback_starts_a_fresh_transaction(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    @idempotent(store, key="rb", atomic=True, namespace="charge")
    async def charge() -> int:
        session = await sa_atomic.asession(aengine)
        session.add(Charge(order="discarded", cents=1))
        await session.flush()
        await session.rollback()  # the application changes its mind
        session.add(Charge(order="kept", cents=2))
        return 2

    assert await charge() == 2
    assert charges(store) == [("kept", 2)]
    assert await charge() == 2  # replayed


async def test_the_transaction_holds_the_write_lock_from_its_start(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    @idempotent(store, key="lock", atomic=True, namespace="charge")
    async def charge() -> bool:
        await sa_atomic.aconnection(aengine)
        probe = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
        return False

    assert await charge() is True


def take_over(store: SQLiteStore, key: str) -> None:
    """What a retry does once this holder's lease lapsed: the lease lapses now, and another
    store handle claims the key as a takeover."""
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE retrysafe_records SET lease_until = 0")
        (fingerprint,) = raw.execute("SELECT fingerprint FROM retrysafe_records").fetchone()
    other = SQLiteStore(store.path)
    try:
        taken = other.claim(storage_id("function\0charge", key), fingerprint, 10.0)
    finally:
        other.close()
    assert isinstance(taken, Claimed)
    assert taken.recovered


async def test_fenced_out_commits_nothing(aengine: AsyncEngine, store: SQLiteStore) -> None:
    @idempotent(store, key="fenced", atomic=True, namespace="charge")
    async def charge() -> str:
        take_over(store, "fenced")
        (await sa_atomic.asession(aengine)).add(Charge(order="fenced", cents=1))
        return "old holder"

    with pytest.raises(ClaimTakenOver):
        await charge()
    assert charges(store) == []
    assert record_state(store, "fenced") is State.IN_FLIGHT  # the new holder's claim stands


async def test_a_takeover_between_phases_rolls_back_the_old_holders_later_writes(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    """The old holder commits a phase and pauses past its lease; a retry takes the key over
    and completes. The old holder's later ORM change (on the session it already has) is
    rolled back at its completion; the retry's write and answer stand."""

    @idempotent(store, key="fph", ignore_args=("role",), atomic=True, namespace="charge")
    async def charge(role: str) -> str:
        session = await sa_atomic.asession(aengine)
        if role == "new":
            session.add(Charge(order="new", cents=3))
            return role
        session.add(Charge(order="one", cents=1))
        await atomic.aphase("one")
        with sqlite3.connect(store.path) as raw:
            raw.execute("UPDATE retrysafe_records SET lease_until = 0")
        assert await charge("new") == "new"  # the retry: a takeover, resumed after "one"
        session.add(Charge(order="old", cents=2))
        return role

    with pytest.raises(ClaimTakenOver):
        await charge("old")
    assert charges(store) == [("one", 1), ("new", 3)]
    assert await charge("again") == "new"


async def test_orm_changes_after_a_phase_commit_with_the_record(
    aengine: AsyncEngine, store: SQLiteStore
) -> None:
    @idempotent(store, key="ph", atomic=True, namespace="charge")
    async def ride() -> str | None:
        session = await sa_atomic.asession(aengine)
        session.add(Charge(order="reserved", cents=1))  # flushed by aphase
        await atomic.aphase("reserved")
        assert charges(store) == [("reserved", 1)]  # committed, visible now
        session.add(Charge(order="paid", cents=2))  # same session: flushed at completion
        return atomic.current_phase()

    assert await ride() == "reserved"
    assert charges(store) == [("reserved", 1), ("paid", 2)]


async def test_one_handle_per_execution(aengine: AsyncEngine, store: SQLiteStore) -> None:
    @idempotent(store, key="y", atomic=True, namespace="charge")
    async def charge() -> None:
        await sa_atomic.aconnection(aengine)
        await atomic.atransaction()

    with pytest.raises(ConfigurationError, match="already open"):
        await charge()


async def test_an_engine_on_another_file_is_refused(store: SQLiteStore, tmp_path: Path) -> None:
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")

    @idempotent(store, key="x", atomic=True, namespace="charge")
    async def charge() -> None:
        await sa_atomic.aconnection(other)

    try:
        with pytest.raises(ForeignConnection, match=r"other\.db"):
            await charge()
    finally:
        await other.dispose()


def test_a_sync_orm_change_after_a_phase_commits_with_the_record(tmp_path: Path) -> None:
    """The sync face keeps a session's changes made after a phase too (flushed at completion,
    in a transaction the completion re-checks)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(engine)
    store = SQLiteStore(str(tmp_path / "sync.db"))

    @idempotent(store, key="sph", atomic=True, namespace="charge")
    def ride() -> str | None:
        session = sa_atomic.session(engine)
        session.add(Charge(order="reserved", cents=1))
        atomic.phase("reserved")
        session.add(Charge(order="paid", cents=2))
        return atomic.current_phase()

    try:
        assert ride() == "reserved"
        assert charges(store) == [("reserved", 1), ("paid", 2)]
    finally:
        store.close()
        engine.dispose()


@pytest.mark.slow
def test_sigkill_around_the_commit_leaves_exactly_one_charge(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    SQLiteStore(db).close()  # the store's tables, next to the application's
    with sqlite3.connect(db) as raw:
        raw.execute(LEDGER)
    worker = Worker(db, target=aiosqlite_worker)
    worker.start()
    try:
        # Each kill leaves the charge and the completion both or neither (checked after it).
        answers = {f"aio-{p}": charge_killed_at(worker, f"aio-{p}", p) for p in NAMED_POINTS}
        kind, _, answers["calm"] = worker.send("calm", None)
        assert kind == "done"
    finally:
        worker.stop()
    assert worker.kills == len(NAMED_POINTS)
    assert worker.db.charges() == {key: [answer["row"]] for key, answer in answers.items()}
    assert {worker.db.record("function", key).state for key in answers} == {State.COMPLETED}

"""Atomic completion through SQLAlchemy on the real PostgreSQL (psycopg 3 dialect), sync and
async: the application's Core connection / ORM session lends its psycopg connection to the
unit, so its writes, the fencing re-check and the record's completion share one transaction
and one COMMIT (SPEC 13a)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, Integer, String, create_engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kit.atomic_pg import PgDb, pg
from kit.wakes import HANG
from retrysafe import atomic
from retrysafe._policy import storage_id
from retrysafe._records import Claimed, ClaimResult, Existing, Record, State
from retrysafe.atomic import sqlalchemy as sa_atomic
from retrysafe.errors import ClaimTakenOver, ConfigurationError, ForeignConnection
from retrysafe.stores.postgres import PostgresStore
from retrysafe.tools import idempotent

__all__ = ["pg"]


def sa_url(url: str) -> str:
    """The store's URL as a SQLAlchemy URL with the psycopg 3 driver."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def ledger_model(table: str) -> type:
    """An ORM class over the test's ledger table (unique name per test, own registry)."""

    class Base(DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        key: Mapped[str] = mapped_column(String)
        cents: Mapped[int] = mapped_column(Integer)

    return Row


@pytest.fixture
def engine(pg: PgDb) -> Iterator[Engine]:
    made = create_engine(sa_url(pg.url))
    yield made
    made.dispose()


@pytest.fixture
async def aengine(pg: PgDb) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(sa_url(pg.url))
    yield made
    await made.dispose()


def _record(pg: PgDb, key: str) -> Record | None:
    return pg.store.get(storage_id("function\0charge", key))


def test_orm_and_core_writes_commit_with_the_record(pg: PgDb, engine: Engine) -> None:
    Row = ledger_model(pg.ledger_table)
    runs: list[str] = []

    @idempotent(pg.store, key=lambda key: key, atomic=True, namespace="charge")
    def charge(key: str) -> int:
        runs.append(key)
        session = sa_atomic.session(engine)
        assert sa_atomic.session(engine) is session  # one session per execution
        assert session.connection() is sa_atomic.connection(engine)
        session.add(Row(key=key, cents=100))
        session.commit()  # harmless: the record's COMMIT is the real one
        sa_atomic.connection(engine).execute(
            text(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES (:k, 1)"), {"k": key}
        )
        session.add(Row(key=key, cents=2))  # never flushed by us: flushed before completion
        return len(runs)

    assert charge("k1") == 1
    assert charge("k1") == 1  # replayed
    assert runs == ["k1"]
    assert sorted(pg.ledger()) == [("k1", 1), ("k1", 2), ("k1", 100)]
    record = _record(pg, "k1")
    assert record is not None
    assert record.state is State.COMPLETED


def test_an_exception_rolls_back_both_and_releases(pg: PgDb, engine: Engine) -> None:
    attempts: list[int] = []

    @idempotent(pg.store, key=lambda key: key, atomic=True, namespace="charge")
    def charge(key: str) -> int:
        attempts.append(1)
        conn = sa_atomic.connection(engine)
        conn.execute(text(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES (:k, 7)"), {"k": key})
        if len(attempts) == 1:
            raise RuntimeError("after the write")
        count = conn.execute(text(f"SELECT count(*) FROM {pg.ledger_table}")).scalar_one()
        return int(count)

    with pytest.raises(RuntimeError):
        charge("k2")
    assert pg.ledger() == []
    assert _record(pg, "k2") is None  # released
    assert charge("k2") == 1  # the retry runs; its write alone is there
    assert pg.ledger() == [("k2", 7)]


def test_a_flush_error_is_the_handlers_error(pg: PgDb, engine: Engine) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE UNIQUE INDEX ON {pg.ledger_table} (key)")
        conn.execute(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('taken', 1)")
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="dup", atomic=True, namespace="charge")
    def charge() -> str:
        sa_atomic.session(engine).add(Row(key="taken", cents=2))  # unique violation at flush
        return "never stored"

    with pytest.raises(IntegrityError):
        charge()
    assert pg.ledger() == [("taken", 1)]
    assert _record(pg, "dup") is None


def take_over(pg: PgDb, key: str) -> None:
    """What a retry does once this holder's lease lapsed (a stopped process renews nothing):
    the lease is made to lapse now, and another store handle claims the key as a takeover.
    The policy's default lease keeps the holder's heartbeat (a third of it) out of the way."""
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"UPDATE {pg.prefix}records SET lease_until = 0")
        row = conn.execute(f"SELECT fingerprint FROM {pg.prefix}records").fetchone()
    assert row is not None
    other = pg.open()
    try:
        taken = other.claim(storage_id("function\0charge", key), str(row[0]), 10.0)
    finally:
        other.close()
    assert isinstance(taken, Claimed)
    assert taken.recovered


def test_fenced_out_commits_nothing(pg: PgDb, engine: Engine) -> None:
    """A retry took the key over before the old holder's first write: the re-check refuses,
    nothing the old holder wrote is committed, the new holder's claim stands."""
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="fenced", atomic=True, namespace="charge")
    def charge() -> str:
        take_over(pg, "fenced")
        sa_atomic.session(engine).add(Row(key="fenced", cents=1))  # the re-check refuses here
        return "old holder"

    with pytest.raises(ClaimTakenOver):
        charge()
    assert pg.ledger() == []
    record = _record(pg, "fenced")
    assert record is not None
    assert record.state is State.IN_FLIGHT


def test_fenced_out_between_phases_rolls_back_the_later_writes(pg: PgDb, engine: Engine) -> None:
    """Work committed with a recovery point stays; the takeover after it fences the rest."""
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="fph", atomic=True, namespace="charge")
    def charge() -> str:
        sa_atomic.session(engine).add(Row(key="fph", cents=1))
        atomic.phase("one")
        take_over(pg, "fph")
        sa_atomic.session(engine).add(Row(key="fph", cents=2))
        return "old holder"

    with pytest.raises(ClaimTakenOver):
        charge()
    assert pg.ledger() == [("fph", 1)]


def test_a_takeover_waits_for_the_lent_connection_and_replays(pg: PgDb, engine: Engine) -> None:
    """The record row is locked on the SQLAlchemy connection from the first handle on: a retry
    arriving after the lease lapsed waits for our COMMIT, then replays our result."""
    key = storage_id("function\0charge", "race")
    answers: list[ClaimResult] = []

    @idempotent(pg.store, key="race", atomic=True, namespace="charge")
    def charge() -> str:
        with psycopg.connect(pg.url, autocommit=True) as conn:  # lapsed, nobody took it yet
            conn.execute(f"UPDATE {pg.prefix}records SET lease_until = 0")
            row = conn.execute(f"SELECT fingerprint FROM {pg.prefix}records").fetchone()
        assert row is not None
        sa_atomic.connection(engine).execute(
            text(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('race', 5)")
        )
        other = pg.open()
        retry = threading.Thread(target=lambda: answers.append(other.claim(key, row[0], 10.0)))
        retry.start()
        try:
            _wait_for_a_lock_waiter(pg)
            assert answers == []  # still blocked on our row lock
        finally:
            retry_done.append((retry, other))
        return "first"

    retry_done: list[tuple[threading.Thread, PostgresStore]] = []
    assert charge() == "first"
    thread, other = retry_done[0]
    thread.join(10)
    other.close()
    assert len(answers) == 1
    assert isinstance(answers[0], Existing)
    assert answers[0].record.state is State.COMPLETED
    assert pg.ledger() == [("race", 5)]


def _wait_for_a_lock_waiter(pg: PgDb) -> None:
    """Until another backend waits on a lock (the retry's upsert of our locked row)."""
    with psycopg.connect(pg.url, autocommit=True) as conn:
        deadline = time.monotonic() + HANG  # bounds a hang only
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND position(%s in query) > 0",
                (f"{pg.prefix}records",),  # ours alone: other tests share the database
            ).fetchone()
            if row is not None and row[0] >= 1:
                return
            time.sleep(0.01)  # polling a condition, not waiting for it to happen
    raise AssertionError("the retry never waited for the record row's lock")


def test_an_engine_on_another_database_is_refused(pg: PgDb) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS retrysafe_sqla_other")
        conn.execute("CREATE DATABASE retrysafe_sqla_other")
    other = create_engine(sa_url(pg.url).rsplit("/", 1)[0] + "/retrysafe_sqla_other")

    @idempotent(pg.store, key="x", atomic=True, namespace="charge")
    def charge() -> None:
        sa_atomic.connection(other)

    try:
        with pytest.raises(ForeignConnection, match="does not reach"):
            charge()
    finally:
        other.dispose()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS retrysafe_sqla_other")


def test_one_handle_per_execution(pg: PgDb, engine: Engine) -> None:
    @idempotent(pg.store, key="y", atomic=True, namespace="charge")
    def charge() -> None:
        atomic.transaction()
        sa_atomic.connection(engine)

    with pytest.raises(ConfigurationError, match="already open"):
        charge()


def test_raw_and_orm_share_the_connection_once_lent(pg: PgDb, engine: Engine) -> None:
    @idempotent(pg.store, key="z", atomic=True, namespace="charge")
    def charge() -> bool:
        conn = sa_atomic.connection(engine)
        return atomic.transaction() is conn.connection.dbapi_connection

    assert charge() is True


def test_phases_commit_orm_work_with_the_recovery_point(pg: PgDb, engine: Engine) -> None:
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="ph", atomic=True, namespace="charge")
    def ride() -> str | None:
        sa_atomic.session(engine).add(Row(key="ph", cents=1))
        sa_atomic.session(engine).flush()
        atomic.phase("reserved")
        with psycopg.connect(pg.url, autocommit=True) as probe:  # committed, visible now
            seen = probe.execute(f"SELECT count(*) FROM {pg.ledger_table}").fetchone()
        assert seen == (1,)
        sa_atomic.session(engine).add(Row(key="ph", cents=2))  # next transaction, re-checked
        return atomic.current_phase()

    assert ride() == "reserved"
    assert sorted(pg.ledger()) == [("ph", 1), ("ph", 2)]


async def test_async_phase_flushes_and_commits_orm_work(pg: PgDb, aengine: AsyncEngine) -> None:
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="aph", atomic=True, namespace="charge")
    async def ride() -> str | None:
        (await sa_atomic.asession(aengine)).add(Row(key="aph", cents=1))  # flushed by aphase
        await atomic.aphase("reserved")
        assert await asyncio.to_thread(pg.ledger) == [("aph", 1)]  # committed, visible now
        (await sa_atomic.asession(aengine)).add(Row(key="aph", cents=2))
        return atomic.current_phase()

    assert await ride() == "reserved"
    assert sorted(pg.ledger()) == [("aph", 1), ("aph", 2)]


# -- async ------------------------------------------------------------------------------------


async def test_async_orm_and_core_commit_with_the_record(pg: PgDb, aengine: AsyncEngine) -> None:
    Row = ledger_model(pg.ledger_table)
    runs: list[str] = []

    @idempotent(pg.store, key=lambda key: key, atomic=True, namespace="charge")
    async def charge(key: str) -> int:
        runs.append(key)
        session = await sa_atomic.asession(aengine)
        assert await sa_atomic.asession(aengine) is session
        session.add(Row(key=key, cents=100))
        await session.commit()  # harmless
        conn = await sa_atomic.aconnection(aengine)
        await conn.execute(insert(Row).values(key=key, cents=1))
        session.add(Row(key=key, cents=2))  # flushed before completion
        return len(runs)

    assert await charge("a1") == 1
    assert await charge("a1") == 1
    assert runs == ["a1"]
    assert sorted(pg.ledger()) == [("a1", 1), ("a1", 2), ("a1", 100)]


async def test_async_exception_rolls_back_both_and_releases(pg: PgDb, aengine: AsyncEngine) -> None:
    Row = ledger_model(pg.ledger_table)
    attempts: list[int] = []

    @idempotent(pg.store, key=lambda key: key, atomic=True, namespace="charge")
    async def charge(key: str) -> int:
        attempts.append(1)
        conn = await sa_atomic.aconnection(aengine)
        await conn.execute(insert(Row).values(key=key, cents=7))
        if len(attempts) == 1:
            raise RuntimeError("after the write")
        return int((await conn.execute(select(func.count()).select_from(Row))).scalar_one())

    with pytest.raises(RuntimeError):
        await charge("a2")
    assert pg.ledger() == []
    assert _record(pg, "a2") is None
    assert await charge("a2") == 1
    assert pg.ledger() == [("a2", 7)]


async def test_async_fenced_out_commits_nothing(pg: PgDb, aengine: AsyncEngine) -> None:
    Row = ledger_model(pg.ledger_table)

    @idempotent(pg.store, key="afenced", atomic=True, namespace="charge")
    async def charge() -> str:
        await asyncio.to_thread(take_over, pg, "afenced")
        (await sa_atomic.asession(aengine)).add(Row(key="afenced", cents=1))
        return "old holder"

    with pytest.raises(ClaimTakenOver):
        await charge()
    assert pg.ledger() == []
    record = _record(pg, "afenced")
    assert record is not None
    assert record.state is State.IN_FLIGHT


async def test_a_postgres_async_engine_is_refused_on_sqlite(tmp_path: object) -> None:
    from pathlib import Path

    from retrysafe.stores.sqlite import SQLiteStore

    assert isinstance(tmp_path, Path)
    store = SQLiteStore(str(tmp_path / "s.db"))
    made = create_async_engine("postgresql+psycopg://127.0.0.1/test")

    @idempotent(store, key="s", atomic=True)
    async def charge() -> None:
        await sa_atomic.aconnection(made)

    try:
        with pytest.raises(ForeignConnection, match="not an aiosqlite engine"):
            await charge()
    finally:
        store.close()
        await made.dispose()

"""Atomic completion through SQLAlchemy (Core connection, ORM session) on a SQLite file.

The application's engine and the store share one database file; the store's tables live next
to the application's. Writes made with SQLAlchemy commit with the record, once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, func, insert, select
from sqlalchemy.exc import IntegrityError

from kit.atomic_sqlalchemy import Base, Charge
from retrysafe import atomic
from retrysafe.atomic import sqlalchemy as sa_atomic
from retrysafe.errors import ConfigurationError, ForeignConnection
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import idempotent


@pytest.fixture(params=["default", "begin-event"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    if request.param == "begin-event":
        # SQLAlchemy's recipe for real SQLite transactions: the driver's own transaction
        # handling off, BEGIN emitted on the engine's "begin" event.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, record: object) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: object) -> None:
            conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[SQLiteStore]:
    assert engine.url.database is not None
    store = SQLiteStore(engine.url.database)
    yield store
    store.close()


def charges(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [(r.order, r.cents) for r in conn.execute(select(Charge.order, Charge.cents))]


def test_orm_writes_commit_with_the_record(engine: Engine, store: SQLiteStore) -> None:
    runs: list[str] = []

    @idempotent(store, key=lambda order, cents: order, atomic=True)
    def charge(order: str, cents: int) -> int:
        runs.append(order)
        session = sa_atomic.session(engine)
        assert sa_atomic.session(engine) is session  # one session per execution
        session.add(Charge(order=order, cents=cents))
        session.commit()  # harmless: the record's commit is the real one
        return cents

    assert charge("o-1", 500) == 500
    assert charge("o-1", 500) == 500
    assert runs == ["o-1"]
    assert charges(engine) == [("o-1", 500)]


def test_unflushed_orm_changes_are_flushed_before_the_record_completes(
    engine: Engine, store: SQLiteStore
) -> None:
    @idempotent(store, key=lambda order: order, atomic=True)
    def charge(order: str) -> str:
        sa_atomic.session(engine).add(Charge(order=order, cents=1))  # never flushed by us
        return order

    charge("o-2")
    assert charges(engine) == [("o-2", 1)]


def test_core_writes_roll_back_with_an_exception(engine: Engine, store: SQLiteStore) -> None:
    attempts: list[int] = []

    @idempotent(store, key=lambda order: order, atomic=True)
    def charge(order: str) -> int:
        attempts.append(1)
        conn = sa_atomic.connection(engine)
        conn.execute(insert(Charge).values(order=order, cents=7))
        if len(attempts) == 1:
            raise RuntimeError("after the write")
        return int(conn.execute(select(func.count()).select_from(Charge)).scalar_one())

    with pytest.raises(RuntimeError):
        charge("o-3")
    assert charges(engine) == []
    assert charge("o-3") == 1  # released: the retry runs, its write alone is there
    assert charges(engine) == [("o-3", 7)]


def test_a_flush_error_is_the_handlers_error(engine: Engine, store: SQLiteStore) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Charge).values(order="taken", cents=1))

    @idempotent(store, key="dup", atomic=True)
    def charge() -> str:
        sa_atomic.session(engine).add(Charge(order="taken", cents=2))  # unique violation
        return "never stored"

    with pytest.raises(IntegrityError):
        charge()
    assert charges(engine) == [("taken", 1)]
    record = store.get(next(iter(_ids(store))))
    assert record is None or record.response is None


def _ids(store: SQLiteStore) -> list[str]:
    with sqlite3.connect(store.path) as raw:
        return [r[0] for r in raw.execute("SELECT id FROM retrysafe_records")] or ["none"]


def test_a_user_rollback_starts_a_fresh_checked_transaction(
    engine: Engine, store: SQLiteStore
) -> None:
    @idempotent(store, key="rb", atomic=True)
    def charge() -> int:
        session = sa_atomic.session(engine)
        session.add(Charge(order="discarded", cents=1))
        session.flush()
        session.rollback()  # the application changes its mind
        session.add(Charge(order="kept", cents=2))
        return 2

    assert charge() == 2
    assert charges(engine) == [("kept", 2)]
    assert charge() == 2  # replayed


def test_an_engine_on_another_database_is_refused(
    engine: Engine, store: SQLiteStore, tmp_path: Path
) -> None:
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")

    @idempotent(store, key="x", atomic=True)
    def charge() -> None:
        sa_atomic.connection(other)

    with pytest.raises(ForeignConnection, match=r"other\.db"):
        charge()
    other.dispose()


def test_one_handle_per_execution(engine: Engine, store: SQLiteStore) -> None:
    @idempotent(store, key="y", atomic=True)
    def charge() -> None:
        atomic.transaction()
        sa_atomic.connection(engine)

    with pytest.raises(ConfigurationError, match="already open"):
        charge()


def test_the_transaction_holds_the_write_lock_from_its_start(
    engine: Engine, store: SQLiteStore
) -> None:
    """BEGIN IMMEDIATE (or a first write, when the engine began on its own): the token is
    checked under the lock, so no takeover can slip in before the commit."""

    @idempotent(store, key="lock", atomic=True)
    def charge() -> bool:
        sa_atomic.connection(engine)
        probe = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
        return False

    assert charge() is True

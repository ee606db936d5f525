"""Atomic completion with SQLAlchemy (SPEC 13a): write with your Core connection or ORM session.

Inside an atomic handler or ``@idempotent(..., atomic=True)`` function whose store is a
:class:`~retrysafe.stores.sqlite.SQLiteStore` on the application's own database file, or a
:class:`~retrysafe.stores.postgres.PostgresStore` on the application's PostgreSQL database::

    from retrysafe.atomic.sqlalchemy import connection, session

    session(engine).add(Charge(order_id=order, cents=cents))      # ORM
    connection(engine).execute(insert(charges).values(...))       # or Core

    (await asession(aengine)).add(...)                            # async

Both are the same SQLAlchemy ``Connection`` of ``engine``, in the execution's transaction: the
record's completion is written on its DBAPI connection and committed with your writes, once.
Do not commit yourself; ``Session.commit()`` is harmless (the session joins the outer
transaction in ``rollback_only`` mode and leaves it open), pending ORM changes are flushed
before the record completes, and a flush error counts as the handler's exception (writes
rolled back, claim released).

The engine must reach the store's database (:class:`~retrysafe.errors.ForeignConnection` if
not): the same SQLite file (async: the aiosqlite dialect, ``sqlite+aiosqlite://``, whose
connection the unit uses on aiosqlite's thread, :mod:`retrysafe.atomic._sqlalchemy_aiosqlite`),
or - with the psycopg 3 dialect, ``postgresql+psycopg://`` - the same PostgreSQL database,
whose connection is lent to the unit (:mod:`retrysafe.atomic._sqlalchemy_pg`). The store's
tables may live in that database next to the application's. Requires SQLAlchemy 2
(``pip install retrysafe[sqlalchemy]``; async SQLite also needs ``aiosqlite``).
"""

from __future__ import annotations

from retrysafe._extras import require

require("sqlalchemy", "retrysafe.atomic.sqlalchemy", "sqlalchemy")


import sqlite3
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from retrysafe.atomic._context import held_unit, postgres_unit
from retrysafe.atomic._sqlalchemy_session import SessionLink
from retrysafe.errors import AtomicUnsupported, ForeignConnection
from retrysafe.stores.sqlite import PHASES, SQLiteStore, SQLiteUnit, same_database

if TYPE_CHECKING:  # the asyncio extension needs greenlet: imported only when used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    from retrysafe.atomic._sqlalchemy_aiosqlite import AsyncSQLiteLink
    from retrysafe.atomic._sqlalchemy_pg import AsyncPostgresLink, PostgresLink
    from retrysafe.stores import AtomicUnit
    from retrysafe.stores.postgres import PostgresUnit


class SQLAlchemyLink(SessionLink):
    """A connection of the application's engine, as the unit's link to the database."""

    def __init__(self, engine: Engine, store: SQLiteStore) -> None:
        super().__init__(engine)
        try:
            raw: object = self._conn.connection.dbapi_connection
            if not isinstance(raw, sqlite3.Connection):
                raise ForeignConnection(
                    f"engine {engine.url!r} is not a SQLite engine on the store's file "
                    f"{store.path!r}; atomic completion needs one database for both"
                )
            same_database(raw, store)
        except BaseException:
            self._conn.close()
            raise
        self._raw: sqlite3.Connection = raw

    @property
    def raw(self) -> sqlite3.Connection:
        return self._raw

    def begin(self) -> None:
        if not self._conn.in_transaction():  # a flush after a phase may have begun it
            self._conn.begin()
        if not self._raw.in_transaction:
            self._raw.execute("BEGIN IMMEDIATE")
        else:
            # The engine began on its own (a "begin" event emitting BEGIN, as SQLAlchemy's
            # pysqlite recipe does): a write statement takes the write lock before anything
            # is read, which is what BEGIN IMMEDIATE would have done.
            self._raw.execute(f"DELETE FROM {PHASES} WHERE 0")

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.expunge_all()  # its objects describe rows that no longer exist
        self._conn.rollback()


def _link(engine: Engine) -> SQLAlchemyLink | PostgresLink:
    unit = held_unit()
    link: SQLAlchemyLink | PostgresLink
    if isinstance(unit, SQLiteUnit):
        link = unit.attach(SQLAlchemyLink, lambda store: SQLAlchemyLink(engine, store))
    else:
        pg = _postgres(unit)
        from retrysafe.atomic._sqlalchemy_pg import PostgresLink

        link = pg.attach(PostgresLink, lambda store: PostgresLink(engine, store))
    if link.engine is not engine:
        raise ForeignConnection(
            "this execution's atomic transaction is already open on another engine; use one "
            "engine for every write of one handler"
        )
    return link


def connection(engine: Engine) -> Connection:
    """``engine``'s connection in this execution's transaction (begun on first use)."""
    return _link(engine).handle


def session(engine: Engine, **options: Any) -> Session:
    """An ORM session on :func:`connection` (the same one for the whole execution)."""
    return _link(engine).session(**options)


async def aconnection(engine: AsyncEngine) -> AsyncConnection:
    """``engine``'s ``AsyncConnection`` in this execution's transaction (begun on first use)."""
    return (await _alink(engine)).handle


async def asession(engine: AsyncEngine, **options: Any) -> AsyncSession:
    """An ``AsyncSession`` on :func:`aconnection` (the same one for the whole execution)."""
    return (await _alink(engine)).session(**options)


def _postgres(unit: AtomicUnit) -> PostgresUnit:
    """``unit`` as a PostgreSQL unit, or :class:`AtomicUnsupported`."""
    pg = postgres_unit(unit)
    if pg is None:
        raise AtomicUnsupported(
            "the SQLAlchemy integration works with SQLiteStore and PostgresStore; this "
            f"execution's store gives {type(unit).__name__} units"
        )
    return pg


async def _alink(engine: AsyncEngine) -> AsyncSQLiteLink | AsyncPostgresLink:
    unit = held_unit()
    link: AsyncSQLiteLink | AsyncPostgresLink
    if isinstance(unit, SQLiteUnit):
        from retrysafe.atomic._sqlalchemy_aiosqlite import AsyncSQLiteLink

        link = await unit.aattach(
            AsyncSQLiteLink, lambda store: AsyncSQLiteLink.open(engine, store)
        )
    else:
        from retrysafe.atomic._sqlalchemy_pg import AsyncPostgresLink

        link = await _postgres(unit).aattach(
            AsyncPostgresLink, lambda store: AsyncPostgresLink.open(engine, store)
        )
    if link.engine is not engine:
        raise ForeignConnection(
            "this execution's atomic transaction is already open on another engine; use one "
            "engine for every write of one handler"
        )
    return link


__all__ = [
    "SQLAlchemyLink",
    "aconnection",
    "asession",
    "connection",
    "session",
]

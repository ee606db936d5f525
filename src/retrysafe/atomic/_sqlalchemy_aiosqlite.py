"""Async SQLAlchemy on SQLite (aiosqlite dialect): the application's connection, on its thread.

aiosqlite runs each ``sqlite3`` connection on a thread of its own and SQLAlchemy's async
dialect reaches it through that thread. The link lends the unit that same ``sqlite3``
connection and runs the unit's blocking steps there (``BEGIN IMMEDIATE`` and the fencing
re-check, the record's completion, ``COMMIT``), so the application's Core/ORM writes and the
record commit once, together (SPEC 13a). SQLAlchemy's own transaction on the connection is an
outer one it never commits: an ``AsyncSession`` joins it in ``rollback_only`` mode, so
``session.commit()`` only flushes; closing the connection rolls back nothing left.

aiosqlite's way onto its thread (``Connection._execute``) is not public API; SQLAlchemy's own
dialect uses the same queue (to set ``isolation_level``), and the link checks it is there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from retrysafe.atomic._sqlalchemy_async import AsyncSessionLink
from retrysafe.errors import ForeignConnection
from retrysafe.stores.sqlite import PHASES, SQLiteStore, same_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")


class AsyncSQLiteLink(AsyncSessionLink):
    """A connection of the application's async engine, as the unit's (async) link."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, driver: Any) -> None:
        super().__init__(engine, conn)
        self._driver = driver  # the aiosqlite.Connection
        self._raw: sqlite3.Connection = driver._conn

    @classmethod
    async def open(cls, engine: AsyncEngine, store: SQLiteStore) -> AsyncSQLiteLink:
        conn = await engine.connect()
        try:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            if not callable(getattr(driver, "_execute", None)) or not isinstance(
                getattr(driver, "_connection", None), sqlite3.Connection
            ):
                raise ForeignConnection(
                    f"engine {engine.url!r} is not an aiosqlite engine on the store's file "
                    f"{store.path!r}; async atomic completion on SQLite needs "
                    "sqlite+aiosqlite:// on the same file"
                )
            await driver._execute(same_database, driver._connection, store)
            await conn.begin()  # SQLAlchemy's outer transaction: it never commits it
        except BaseException:
            await conn.close()
            raise
        return cls(engine, conn, driver)

    @property
    def raw(self) -> sqlite3.Connection:
        return self._raw

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._driver._execute(fn, *args)
        return result

    # On aiosqlite's thread (inside run):

    def begin(self) -> None:
        if not self._raw.in_transaction:
            self._raw.execute("BEGIN IMMEDIATE")
        else:  # the engine began on its own ("begin" event): take the write lock now
            self._raw.execute(f"DELETE FROM {PHASES} WHERE 0")

    def flush(self) -> None:
        pass  # aflush ran first, on the event loop

    def commit(self) -> None:
        self._raw.commit()

    def rollback(self) -> None:
        self._raw.rollback()
        if self._session is not None:
            self._session.expunge_all()  # its objects describe rows that no longer exist

    def close(self) -> None:
        raise RuntimeError("an async link is closed with aclose()")  # never: units await it

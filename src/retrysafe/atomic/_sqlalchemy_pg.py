"""SQLAlchemy on PostgreSQL (psycopg 3): the application's connection is lent to the unit.

The unit adopts the psycopg connection under a SQLAlchemy ``Connection`` (or ``AsyncConnection``)
of the application's engine: its fencing re-check, the application's Core/ORM writes and the
record's completion run on that one connection, in one transaction, ended by one ``COMMIT``
(SPEC 13a). SQLAlchemy's own transaction on it is an outer one it never commits: an ORM
``Session`` joins it in ``rollback_only`` mode, so ``Session.commit()`` only flushes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Engine

if TYPE_CHECKING:  # the asyncio extension needs greenlet: imported only when used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retrysafe.atomic._sqlalchemy_async import AsyncSessionLink
from retrysafe.atomic._sqlalchemy_session import SessionLink
from retrysafe.errors import ForeignConnection
from retrysafe.stores.postgres import PostgresStore, areaches_store, reaches_store


def _foreign(engine: object, store: PostgresStore) -> ForeignConnection:
    return ForeignConnection(
        f"engine {engine!r} does not reach the idempotency store's PostgreSQL database "
        f"({store.sql.table_name}); atomic completion needs the application's writes and the "
        "record in one database: point the engine at the store's database with the psycopg "
        "driver (postgresql+psycopg://)"
    )


class PostgresLink(SessionLink):
    """A connection of the application's (sync) engine, as the unit's connection."""

    def __init__(self, engine: Engine, store: PostgresStore) -> None:
        super().__init__(engine)
        try:
            raw: object = self._conn.connection.dbapi_connection
            if not isinstance(raw, psycopg.Connection) or not reaches_store(raw, store):
                raise _foreign(engine.url, store)
            self._conn.begin()  # SQLAlchemy's outer transaction (emits nothing with psycopg)
        except BaseException:
            self._conn.close()
            raise
        self._raw: psycopg.Connection[Any] = raw

    @property
    def raw(self) -> psycopg.Connection[Any]:
        return self._raw

    @property
    def araw(self) -> None:
        return None

    def ended(self, committed: bool) -> None:
        pass  # SQLAlchemy's outer transaction never commits: nothing to settle

    async def aflush(self) -> None:
        self.flush()

    async def aclose(self) -> None:
        self.close()


class AsyncPostgresLink(AsyncSessionLink):
    """A connection of the application's async engine, as the unit's ``AsyncConnection``."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, raw: Any) -> None:
        super().__init__(engine, conn)
        self._raw: psycopg.AsyncConnection[Any] = raw

    @classmethod
    async def open(cls, engine: AsyncEngine, store: PostgresStore) -> AsyncPostgresLink:
        conn = await engine.connect()
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            if not isinstance(raw, psycopg.AsyncConnection) or not await areaches_store(raw, store):
                raise _foreign(engine.url, store)
            await conn.begin()
        except BaseException:
            await conn.close()
            raise
        return cls(engine, conn, raw)

    @property
    def raw(self) -> None:
        return None

    @property
    def araw(self) -> psycopg.AsyncConnection[Any]:
        return self._raw

    def flush(self) -> None:
        raise RuntimeError("an async link is flushed with aflush()")  # never: units await it

    def ended(self, committed: bool) -> None:
        pass  # SQLAlchemy's outer transaction never commits: nothing to settle

    def close(self) -> None:
        raise RuntimeError("an async link is closed with aclose()")

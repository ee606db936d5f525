"""Worker processes for the PostgreSQL SIGKILL tests (spawned; SIGKILLed by the parent).

Each serves jobs from a pipe and, at a named pause point, reports ``("paused", key, point)``
and blocks: the parent kills it right there, so every kill lands at a known place.
"""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from kit.atomic_sqlite_child import LEASE, PHASES, _pause, policy, serve_rides
from retrysafe import atomic
from retrysafe.stores.postgres import PostgresStore

__all__ = ["LEASE", "PHASES", "charge_worker", "phased_worker", "policy"]


def _insert(ledger: str) -> str:
    return f"INSERT INTO {ledger} (key, cents) VALUES (%s, %s) RETURNING id"


def charge_worker(url: str, prefix: str, mode: str, conn: Connection) -> None:
    """Serve ``(key, cents, pause)`` jobs through ``@idempotent``; ``mode`` is ``plain`` (the
    charge commits on its own connection), ``atomic`` (sync, in the record's transaction) or
    ``aatomic`` (an async function on the ``AsyncConnection``); ``sqla``/``asqla`` write
    through SQLAlchemy's (async) engine, its connection lent to the record's transaction."""
    from retrysafe.tools import idempotent

    store = PostgresStore(url, table_prefix=prefix, pool_min=0)
    insert = _insert(f"{prefix}ledger")
    plain = psycopg.connect(url, autocommit=True)
    decorate = idempotent(
        store,
        key=lambda key, cents, pause: key,
        ignore_args=("pause",),
        policy=policy(),
        atomic=mode != "plain",
        namespace="charge",
    )

    sa_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    sa_insert = f"INSERT INTO {prefix}ledger (key, cents) VALUES (:key, :cents) RETURNING id"

    @decorate
    def charge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        _pause(conn, key, "before_write", pause)
        if mode == "sqla":
            from sqlalchemy import text

            from retrysafe.atomic.sqlalchemy import connection

            found = connection(engine).execute(text(sa_insert), {"key": key, "cents": cents})
            row = found.one()
        else:
            db = atomic.transaction() if mode == "atomic" else plain
            row = db.execute(insert, (key, cents)).fetchone()
        assert row is not None
        _pause(conn, key, "after_write", pause)
        return {"key": key, "row": int(row[0])}

    @decorate
    async def sqla_charge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        from sqlalchemy import text

        from retrysafe.atomic.sqlalchemy import aconnection

        _pause(conn, key, "before_write", pause)
        db = await aconnection(aengine)
        row = (await db.execute(text(sa_insert), {"key": key, "cents": cents})).one()
        _pause(conn, key, "after_write", pause)
        return {"key": key, "row": int(row[0])}

    @decorate
    async def acharge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        _pause(conn, key, "before_write", pause)
        db = await atomic.atransaction()
        row = await (await db.execute(insert, (key, cents))).fetchone()
        assert row is not None
        _pause(conn, key, "after_write", pause)
        return {"key": key, "row": int(row[0])}

    with asyncio.Runner() as runner:
        if mode == "sqla":
            from sqlalchemy import create_engine

            engine = create_engine(sa_url)
        if mode == "asqla":
            from sqlalchemy.ext.asyncio import create_async_engine

            aengine = create_async_engine(sa_url)  # bound to the runner's one event loop
        conn.send(("ready", "", None))
        while True:
            key, cents, pause = conn.recv()
            if mode == "aatomic":
                result = runner.run(acharge(key, cents, pause))
            elif mode == "asqla":
                result = runner.run(sqla_charge(key, cents, pause))
            else:
                result = charge(key, cents, pause)
            _pause(conn, key, "after_commit", pause)
            conn.send(("done", key, result))


def phased_worker(url: str, prefix: str, mode: str, conn: Connection) -> None:
    """Serve ``(key, 0, pause)`` jobs with a three-phase ``@idempotent(atomic=True)`` function.

    Each phase calls a "foreign service" (its own autocommit connection: it logs every call
    and keeps one effect per derived key, as an idempotent API would), writes a ledger row in
    the record's transaction and commits a recovery point. Pause points are ``after_<phase>``
    (committed) and ``called_<phase>`` (foreign call made, not committed).
    """
    store = PostgresStore(url, table_prefix=prefix, pool_min=0)
    foreign = psycopg.connect(url, autocommit=True)

    def call_foreign(key: str, phase: str) -> None:
        foreign.execute(f"INSERT INTO {prefix}calls (key, phase) VALUES (%s, %s)", (key, phase))
        foreign.execute(
            f"INSERT INTO {prefix}effects (key, phase) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (key, phase),
        )

    serve_rides(store, conn, call_foreign, _insert(f"{prefix}ledger"))

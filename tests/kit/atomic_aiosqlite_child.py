"""A worker process charging through async SQLAlchemy on SQLite (aiosqlite), for the SIGKILL
test: same pipe protocol as :func:`kit.atomic_sqlite_child.charge_worker` (spawned, killed at
pauses)."""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection
from typing import Any

from kit.atomic_sqlite_child import _pause, policy


def aiosqlite_worker(path: str, door: str, is_atomic: bool, conn: Connection) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from retrysafe.atomic.sqlalchemy import aconnection
    from retrysafe.stores.sqlite import SQLiteStore
    from retrysafe.tools import idempotent

    store = SQLiteStore(path)
    insert = text("INSERT INTO ledger (key, cents) VALUES (:key, :cents)")

    @idempotent(
        store,
        key=lambda key, cents, pause: key,
        ignore_args=("pause",),
        policy=policy(),
        atomic=is_atomic,
        namespace="charge",
    )
    async def charge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        _pause(conn, key, "before_write", pause)
        db = await aconnection(engine)
        row = (await db.execute(insert, {"key": key, "cents": cents})).lastrowid
        _pause(conn, key, "after_write", pause)
        return {"key": key, "row": row}

    with asyncio.Runner() as runner:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")  # the runner's one loop
        conn.send(("ready", "", None))
        while True:
            key, cents, pause = conn.recv()
            result = runner.run(charge(key, cents, pause))
            _pause(conn, key, "after_commit", pause)
            conn.send(("done", key, result))

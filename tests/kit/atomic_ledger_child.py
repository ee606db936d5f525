"""One worker process of the ledger scenario (``atomic_ledger.py``).

``python -m kit.atomic_ledger_child CONFIG_JSON`` opens the store, prints ``warm`` and waits
for a line on stdin (it is a spare until then); then it serves a Starlette app under uvicorn on
a listening socket inherited from the scenario (``CONFIG["fd"]``; the other worker accepts on the
same socket, as pre-forked workers do), prints ``ready`` and runs until it is SIGKILLed.

``POST /charges`` with ``{"charge": id, "n": number, "cents": cents}`` books the charge: one
row in the ledger table of the store's own database (a SQLite file or a PostgreSQL database),
behind retrysafe's ASGI middleware. With ``atomic`` the row is written in the record's
transaction (``atomic.atransaction()``) and commits with the completion; without, it commits
on its own connection first, as a handler without SPEC 13a does.

The forced crash: for every ``crash_every``-th charge, the first execution that gets past the
write leaves a marker file and SIGKILLs its own process - between the side effect and the
completion, the window atomic completion closes. The marker makes the retry run normally.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import atomic
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores._base import AsyncStore

Write = Callable[[str, int], Awaitable[int]]


def _sqlite(config: dict[str, Any]) -> tuple[AsyncStore, Write]:
    from retrysafe.stores.sqlite import SQLiteStore

    path = config["path"]
    insert = "INSERT INTO ledger (key, cents) VALUES (?, ?)"

    async def write(charge: str, cents: int) -> int:
        if config["atomic"]:
            cur = (await atomic.atransaction()).execute(insert, (charge, cents))
        else:
            plain = sqlite3.connect(path, isolation_level=None, timeout=10)
            cur = plain.execute(insert, (charge, cents))
            plain.close()
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    return SQLiteStore(path), write


def _postgres(config: dict[str, Any]) -> tuple[AsyncStore, Write]:
    import psycopg

    from retrysafe.stores.postgres import PostgresStore

    url, prefix = config["url"], config["prefix"]
    insert = f"INSERT INTO {prefix}ledger (key, cents) VALUES (%s, %s) RETURNING id"
    plain = None if config["atomic"] else psycopg.connect(url, autocommit=True)

    async def write(charge: str, cents: int) -> int:
        if plain is None:
            db = await atomic.atransaction()
            row = await (await db.execute(insert, (charge, cents))).fetchone()
        else:
            row = plain.execute(insert, (charge, cents)).fetchone()
        assert row is not None
        return int(row[0])

    return PostgresStore(url, table_prefix=prefix, pool_min=0), write


def build_app(config: dict[str, Any], store: AsyncStore, write: Write) -> Any:
    crashes = Path(config["crashes"])

    async def charge(request: Request) -> JSONResponse:
        doc = await request.json()
        row = await write(doc["charge"], doc["cents"])
        if doc["n"] % config["crash_every"] == 0:
            try:  # O_EXCL: only the first execution past the write crashes
                os.close(os.open(crashes / doc["charge"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return JSONResponse({"charge": doc["charge"], "row": row}, status_code=201)

    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    policy = Policy(scope=shared_scope, lease=config["lease"], wait=config["wait"])
    return ASGIIdempotencyMiddleware(app, store=store, policy=policy, atomic=config["atomic"])


async def serve(config: dict[str, Any]) -> None:
    store, write = {"sqlite": _sqlite, "postgres": _postgres}[config["db"]](config)
    await store.aget("warm-up")  # open the connection pool, as a warm spare would have
    print("warm", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": the supervisor puts us to work
    sock = socket.socket(fileno=config["fd"])
    app = build_app(config, store, write)
    uv = uvicorn.Config(app, log_level="error", access_log=False, lifespan="off")
    server = uvicorn.Server(uv)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # it failed to start: show why
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))

"""Code run in child processes (spawn context) by the SIGKILL tests of atomic completion, on
SQLite; the pipe protocol (``policy``, ``_pause``, ``serve_rides``) the other atomic workers
share.

A worker serves "charge" jobs from a pipe, one at a time, through a real retrysafe door on a
SQLite file: the ``@idempotent`` decorator or the WSGI middleware (called in-process with a
built environ, no server needed). The charge is a row in the ``ledger`` table of the store's
own database - written in the store's transaction when ``atomic`` is on, committed on its own
(autocommit) when it is off, which is what a handler without SPEC 13a does.

A job may name a *pause point*; the worker reports reaching it and blocks, so the parent can
SIGKILL it exactly there: ``before_write``, ``after_write`` (written, not committed) and
``after_commit`` (the door returned: the record committed, the client not yet answered).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from retrysafe import atomic
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.stores.sqlite import SQLiteStore

LEASE = 0.3  # seconds of real time: a retry takes a dead holder's claim over after this
LEDGER = "CREATE TABLE IF NOT EXISTS ledger (key TEXT NOT NULL, cents INTEGER NOT NULL)"
FOREIGN = (
    "CREATE TABLE IF NOT EXISTS calls (key TEXT NOT NULL, phase TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, phase TEXT NOT NULL);"
)
PHASES = ("reserve", "charge", "receipt")


def policy() -> Policy:
    return Policy(scope=shared_scope, lease=LEASE, wait=10.0)


def _pause(conn: Connection, key: str, point: str, wanted: str | None) -> None:
    if point == wanted:
        conn.send(("paused", key, point))
        conn.recv()  # never answered: the parent SIGKILLs us here


def _write(store: SQLiteStore, is_atomic: bool, key: str, cents: int) -> int:
    """The side effect: one ledger row. Returns its rowid."""
    if is_atomic:
        db = atomic.transaction()
        cur = db.execute("INSERT INTO ledger (key, cents) VALUES (?, ?)", (key, cents))
    else:
        plain = sqlite3.connect(store.path, isolation_level=None, timeout=10)
        cur = plain.execute("INSERT INTO ledger (key, cents) VALUES (?, ?)", (key, cents))
        plain.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def _function_door(
    store: SQLiteStore, is_atomic: bool, conn: Connection
) -> Callable[[str, int, str | None], dict[str, Any]]:
    from retrysafe.tools import idempotent

    @idempotent(
        store,
        key=lambda key, cents, pause: key,
        ignore_args=("pause",),
        policy=policy(),
        atomic=is_atomic,
        namespace="charge",
    )
    def charge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        _pause(conn, key, "before_write", pause)
        row = _write(store, is_atomic, key, cents)
        _pause(conn, key, "after_write", pause)
        return {"key": key, "row": row}

    return charge


def _wsgi_door(
    store: SQLiteStore, is_atomic: bool, conn: Connection
) -> Callable[[str, int, str | None], dict[str, Any]]:
    from retrysafe.http import WSGIIdempotencyMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        doc = json.loads(environ["wsgi.input"].read())
        pause = environ.get("HTTP_X_PAUSE")
        _pause(conn, doc["key"], "before_write", pause)
        row = _write(store, is_atomic, doc["key"], doc["cents"])
        _pause(conn, doc["key"], "after_write", pause)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"key": doc["key"], "row": row}).encode()]

    door = WSGIIdempotencyMiddleware(app, store=store, policy=policy(), atomic=is_atomic)

    def charge(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        body = json.dumps({"key": key, "cents": cents}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charges",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_IDEMPOTENCY_KEY": key,
            "wsgi.input": io.BytesIO(body),
        }
        if pause is not None:
            environ["HTTP_X_PAUSE"] = pause
        got: list[str] = []
        chunks = door(environ, lambda status, headers, exc_info=None: got.append(status))
        answer = b"".join(chunks)
        assert got == ["201 Created"], (got, answer)
        result: dict[str, Any] = json.loads(answer)
        return result

    return charge


def _asgi_door(
    store: SQLiteStore, is_atomic: bool, conn: Connection
) -> Callable[[str, int, str | None], dict[str, Any]]:
    """A Starlette app behind the ASGI middleware, driven by httpx's ASGI transport: the
    async path (``atransaction``, units settled on worker threads) in a killable process."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from retrysafe.http import ASGIIdempotencyMiddleware

    async def create(request: Request) -> JSONResponse:
        doc = await request.json()
        pause = request.headers.get("x-pause")
        _pause(conn, doc["key"], "before_write", pause)
        if is_atomic:
            db = await atomic.atransaction()
            cur = db.execute(
                "INSERT INTO ledger (key, cents) VALUES (?, ?)", (doc["key"], doc["cents"])
            )
            row = cur.lastrowid
        else:
            row = _write(store, False, doc["key"], doc["cents"])
        _pause(conn, doc["key"], "after_write", pause)
        return JSONResponse({"key": doc["key"], "row": row}, status_code=201)

    app = Starlette(routes=[Route("/charges", create, methods=["POST"])])
    app.add_middleware(ASGIIdempotencyMiddleware, store=store, policy=policy(), atomic=is_atomic)
    transport = httpx.ASGITransport(app=app)

    async def post(key: str, cents: int, pause: str | None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key, **({"X-Pause": pause} if pause else {})}
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
            reply = await client.post(
                "/charges", json={"key": key, "cents": cents}, headers=headers
            )
        assert reply.status_code == 201, reply.text
        result: dict[str, Any] = reply.json()
        return result

    return lambda key, cents, pause: asyncio.run(post(key, cents, pause))


def charge_worker(path: str, door: str, is_atomic: bool, conn: Connection) -> None:
    """Serve ``(key, cents, pause)`` jobs; answer ``("done", key, result)`` for each."""
    store = SQLiteStore(path)
    make = {"function": _function_door, "wsgi": _wsgi_door, "asgi": _asgi_door}[door]
    charge = make(store, is_atomic, conn)
    conn.send(("ready", "", None))
    while True:
        key, cents, pause = conn.recv()
        result = charge(key, cents, pause)
        _pause(conn, key, "after_commit", pause)
        conn.send(("done", key, result))


def phased_worker(path: str, foreign_path: str, conn: Connection) -> None:
    """Serve ``(key, cents, pause)`` jobs (``cents`` unused) with a three-phase
    ``@idempotent(atomic=True)`` function.

    Each phase writes a row in the store's database, calls a "foreign service" (another
    database: it logs every call and keeps one effect per key, as an idempotent API would)
    with a key derived for the phase, and commits a recovery point. Pause points are
    ``after_<phase>`` (committed) and ``called_<phase>`` (foreign call made, not committed).
    """
    store = SQLiteStore(path)
    foreign = sqlite3.connect(foreign_path, isolation_level=None, timeout=10)

    def call_foreign(key: str, phase: str) -> None:
        foreign.execute("INSERT INTO calls (key, phase) VALUES (?, ?)", (key, phase))
        foreign.execute("INSERT OR IGNORE INTO effects (key, phase) VALUES (?, ?)", (key, phase))

    serve_rides(store, conn, call_foreign, "INSERT INTO ledger (key, cents) VALUES (?, ?)")


def serve_rides(
    store: Any, conn: Connection, call_foreign: Callable[[str, str], None], insert: str
) -> None:
    """The three-phase worker's loop, on any store: ``insert`` writes a ledger row (key,
    cents) in the record's transaction, ``call_foreign(derived key, phase)`` calls out."""
    from retrysafe.tools import idempotent

    @idempotent(
        store,
        key=lambda key, pause: key,
        ignore_args=("pause",),
        policy=policy(),
        atomic=True,
        namespace="ride",
    )
    def ride(key: str, pause: str | None) -> dict[str, Any]:
        resumed_at = atomic.current_phase()
        ran = []
        for phase in PHASES:
            if atomic.reached(phase):
                continue
            ran.append(phase)
            call_foreign(atomic.derived_key(phase), phase)
            _pause(conn, key, f"called_{phase}", pause)
            atomic.transaction().execute(insert, (f"{key}/{phase}", 1))
            atomic.phase(phase)
            _pause(conn, key, f"after_{phase}", pause)
        return {"resumed_at": resumed_at, "ran": ran}

    conn.send(("ready", "", None))
    while True:
        key, _cents, pause = conn.recv()  # every worker reads the same (key, cents, pause) jobs
        conn.send(("done", key, ride(key, pause)))


def stalled_holder(path: str, key: str, when: str, conn: Connection) -> None:
    """One atomic charge that reports at ``when`` (``before_write`` or ``after_write``) and
    waits to be told to go on.

    The parent SIGSTOPs it there (its heartbeat too) and lets the lease lapse, tries to take
    the key over, then SIGCONTs it and says go.
    """
    from retrysafe.errors import ClaimTakenOver
    from retrysafe.tools import idempotent

    store = SQLiteStore(path)

    @idempotent(store, key=lambda key: key, policy=policy(), atomic=True, namespace="charge1")
    def charge(key: str) -> dict[str, Any]:
        if when == "before_write":
            conn.send(("stalling", key, when))
            conn.recv()
        row = _write(store, True, key, 100)
        if when == "after_write":
            conn.send(("stalling", key, when))
            conn.recv()
        return {"key": key, "row": row}

    try:
        conn.send(("done", key, charge(key)))
    except ClaimTakenOver as exc:
        conn.send(("taken_over", key, str(exc)))

"""Every store's async face works under uvloop, the loop ``uvicorn[standard]`` runs.

Before: under uvicorn with ``loop="uvloop"`` every request through the ASGI middleware on the
Redis store answered 503. The Redis async channel (``stores/_redis_wire.py``) asserted in
``connection_made`` that its transport derives from ``asyncio.Transport``; uvloop's transports
do not (they implement the interface in Cython), so the assertion failed inside the loop's
callback, where uvloop only logs it, and the connection was left without its transport: every
command failed with "connection closed" and, the connection never being marked closed, it was
never replaced.

Each test serves a Starlette app behind the middleware under uvicorn on uvloop (a real server
on loopback) and checks what a client sees and how often the handler ran: fresh keys run once
each, their retries replay, concurrent duplicates of one key (waiting on the store's wake-ups)
run it once; and atomic completion (SQLite, PostgreSQL), whose async paths differ again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.servers import serve_asgi
from kit.stores import POSTGRES_URL, StoreKit, kit_fixture
from retrysafe import atomic
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware

pytest.importorskip("uvloop", reason="uvloop is in the dev extra; install it to run these")

WAIT = 30.0  # bounds a hang only
KEYS = 12  # fresh keys sent at once: one pipelined burst on the store's connection
DUPLICATES = 8  # concurrent requests with one key
# Atomic requests all at once, more than the default executor has threads (6 on 2 cores):
# before the SQLite writer gate, waiting writers busy-waited on worker threads and starved the
# transaction holder's commit of a thread until the busy timeout (on any loop). Async writers
# now wait for the gate on the event loop, so every request is answered.
ATOMIC_AT_ONCE = KEYS

kit = kit_fixture(["memory", "sqlite", "redis", "postgres", "redis+cache"])


class Handler:
    """The app's one route: counts its runs per key, names the loop it ran on, and holds the
    key ``gated`` until the test opens the gate (so duplicates find it in flight)."""

    def __init__(self, write: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.runs: Counter[str] = Counter()
        self.loops: set[str] = set()
        self.gate = threading.Event()
        self.arrived = 0  # requests that reached the middleware, under ``arrival``
        self.arrival = threading.Condition()
        self.write = write

    async def charge(self, request: Request) -> JSONResponse:
        key = request.headers["idempotency-key"]
        self.runs[key] += 1
        self.loops.add(type(asyncio.get_running_loop()).__module__)
        if key.startswith("gated"):
            await asyncio.to_thread(self.gate.wait, WAIT)
        if self.write is not None:
            await self.write(key)
        return JSONResponse({"key": key, "run": uuid.uuid4().hex}, status_code=201)

    def app(self, store: Any, *, atomic_mode: bool = False) -> Any:
        inner = Starlette(routes=[Route("/charges", self.charge, methods=["POST"])])
        policy = Policy(scope=shared_scope, wait=WAIT)
        guarded = ASGIIdempotencyMiddleware(inner, store=store, policy=policy, atomic=atomic_mode)

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                with self.arrival:
                    self.arrived += 1
                    self.arrival.notify_all()
            await guarded(scope, receive, send)

        return counted

    def wait_arrived(self, n: int) -> None:
        with self.arrival:
            assert self.arrival.wait_for(lambda: self.arrived >= n, WAIT), self.arrived


@pytest.fixture
def served(kit: StoreKit) -> Iterator[tuple[str, Handler]]:
    handler = Handler()
    with serve_asgi(handler.app(kit.store), loop="uvloop") as base:
        yield base, handler


async def _post(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/charges", json={"cents": 500}, headers={"Idempotency-Key": key})


async def _fresh_then_retried(
    base: str, at_once: int = KEYS
) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """``KEYS`` fresh keys, then each again, ``at_once`` requests in flight at a time."""
    keys = [f"k{i}-{uuid.uuid4().hex}" for i in range(KEYS)]
    slots = asyncio.Semaphore(at_once)

    async def post(client: httpx.AsyncClient, key: str) -> httpx.Response:
        async with slots:
            return await _post(client, key)

    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as client:
        first = await asyncio.gather(*(post(client, key) for key in keys))
        again = await asyncio.gather(*(post(client, key) for key in keys))
    return list(first), list(again)


def test_fresh_keys_run_once_and_retries_replay(served: tuple[str, Handler]) -> None:
    base, handler = served
    first, again = asyncio.run(_fresh_then_retried(base))
    assert [r.status_code for r in first] == [201] * KEYS, [r.text for r in first]
    assert [r.json() for r in again] == [r.json() for r in first]
    assert all(r.headers.get("idempotent-replayed") == "true" for r in again), again[0].headers
    assert sorted(handler.runs.values()) == [1] * KEYS
    assert handler.loops == {"uvloop"}


def test_concurrent_duplicates_wait_for_the_one_run(served: tuple[str, Handler]) -> None:
    base, handler = served
    key = f"gated-{uuid.uuid4().hex}"

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=WAIT) as client:
            sent = [asyncio.create_task(_post(client, key)) for _ in range(DUPLICATES)]
            await asyncio.to_thread(handler.wait_arrived, DUPLICATES)
            handler.gate.set()
            return list(await asyncio.gather(*sent))

    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [201] * DUPLICATES, [r.text for r in answers]
    assert len({r.text for r in answers}) == 1
    assert handler.runs == Counter({key: 1})
    assert handler.loops == {"uvloop"}


def _sqlite_ledger(kit: StoreKit) -> tuple[Callable[[str], Awaitable[None]], Callable[[], int]]:
    path = kit.store.path  # type: ignore[attr-defined]
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS uvloop_ledger (key TEXT)")

    async def write(key: str) -> None:
        (await atomic.atransaction()).execute("INSERT INTO uvloop_ledger VALUES (?)", (key,))

    def rows() -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM uvloop_ledger").fetchone()[0])

    return write, rows


def _postgres_ledger(kit: StoreKit) -> tuple[Callable[[str], Awaitable[None]], Callable[[], int]]:
    import psycopg

    table = f"t{uuid.uuid4().hex[:12]}_uvloop_ledger"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (key TEXT)")
    kit.closers.append(lambda: _drop(table))

    async def write(key: str) -> None:
        db = await atomic.atransaction()
        await db.execute(f"INSERT INTO {table} VALUES (%s)", (key,))

    def rows() -> int:
        with psycopg.connect(POSTGRES_URL) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            return int(row[0]) if row else -1

    return write, rows


def _drop(table: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.parametrize("kit", ["sqlite", "postgres"], indirect=True)
def test_atomic_completion_commits_each_key_once(kit: StoreKit) -> None:
    write, rows = (_sqlite_ledger if kit.name == "sqlite" else _postgres_ledger)(kit)
    handler = Handler(write)
    with serve_asgi(handler.app(kit.store, atomic_mode=True), loop="uvloop") as base:
        first, again = asyncio.run(_fresh_then_retried(base, ATOMIC_AT_ONCE))
    assert [r.status_code for r in first] == [201] * KEYS, [r.text for r in first]
    assert [r.json() for r in again] == [r.json() for r in first]
    assert sorted(handler.runs.values()) == [1] * KEYS
    assert rows() == KEYS
    assert handler.loops == {"uvloop"}

"""Atomic completion behind the ASGI and WSGI middlewares and ``@idempotent`` (SPEC 12, 13,
13a), on SQLite and on PostgreSQL.

The same scenarios run through ``ASGIIdempotencyMiddleware(..., atomic=True)`` (ASGI, a Starlette
app over httpx's ASGI transport) and the WSGI twin (a Flask app over httpx's WSGI transport),
on each database: the handler writes on the store's connection (PostgreSQL's
``AsyncConnection`` under ASGI; SQLite's one connection even from an async handler), the
record commits with it, a 5xx rolls both back, and an attempt whose claim was taken over
answers 409 with nothing committed. SQLite runs on a fake clock so takeovers are on cue;
PostgreSQL's takeover bumps the record's token as a retry past the lease would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flask
import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.atomic_pg import PgDb, make_db
from kit.stores import FakeClock
from retrysafe import Policy, atomic
from retrysafe._records import Claimed, State
from retrysafe._scopes import shared_scope
from retrysafe.atomic._context import current_unit
from retrysafe.errors import AtomicUnsupported, ClaimTakenOver
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import idempotent

POLICY = Policy(scope=shared_scope, lease=10.0)
PROBLEM_TYPE = "urn:retrysafe:problem:request-in-flight"
PATHS = [
    "/charge",
    "/error500",
    "/crash",
    "/phased",
    "/taken-before-begin",
    "/taken-before-commit",
    "/plain",
]


@dataclass
class World:
    """What the handlers share: the store, the ledger next to it, the runs of each route."""

    store: Any
    runs: list[str] = field(default_factory=list)
    # Whether an ASGI handler must use the async API (``atransaction``, ``aphase``).
    async_asgi = False

    def take_over(self) -> None:
        """Let this execution's lease lapse and a retry take the key over."""
        raise NotImplementedError

    def write(self, key: str, cents: int) -> int:
        """A ledger row in the record's transaction; returns its id."""
        conn = atomic.transaction()
        assert isinstance(conn, self.connection)
        row = conn.execute(self.insert, (key, cents)).fetchone()
        assert row is not None
        return int(row[0])

    async def awrite(self, key: str, cents: int) -> int:
        raise NotImplementedError

    insert = ""
    connection: type = object  # what ``atomic.transaction()`` hands a sync handler

    def ledger(self) -> list[tuple[str, int]]:
        """Committed rows ``(key, cents)``, read on a connection of their own."""
        raise NotImplementedError

    def ids(self) -> list[str]:
        """The ids of all records in the store."""
        raise NotImplementedError


@dataclass
class SQLiteWorld(World):
    other: SQLiteStore = field(kw_only=True)  # a second handle on the store: another process
    clock: FakeClock = field(kw_only=True)
    insert = "INSERT INTO ledger (key, cents) VALUES (?, ?) RETURNING rowid"
    connection = sqlite3.Connection

    def take_over(self) -> None:
        unit = current_unit()
        record = self.store.get(unit.id)
        assert record is not None
        self.clock.advance(POLICY.lease_s + 1)
        assert isinstance(self.other.claim(unit.id, record.fingerprint, POLICY.lease_s), Claimed)

    async def awrite(self, key: str, cents: int) -> int:
        row = (await atomic.atransaction()).execute(self.insert, (key, cents)).fetchone()
        return int(row[0])

    def _query(self, sql: str) -> list[Any]:
        with sqlite3.connect(self.store.path) as raw:
            return raw.execute(sql).fetchall()

    def ledger(self) -> list[tuple[str, int]]:
        return self._query("SELECT key, cents FROM ledger ORDER BY rowid")

    def ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM retrysafe_records")]


@dataclass
class PostgresWorld(World):
    pg: PgDb = field(kw_only=True)
    async_asgi = True
    connection = psycopg.Connection

    @property
    def insert(self) -> str:  # type: ignore[override]
        return f"INSERT INTO {self.pg.ledger_table} (key, cents) VALUES (%s, %s) RETURNING id"

    def take_over(self) -> None:
        """What a retry does once this attempt's lease lapsed: a new token on the record."""
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {self.pg.prefix}records SET token = token + 1 WHERE id = %s",
                (current_unit().id,),
            )

    async def awrite(self, key: str, cents: int) -> int:
        conn = await atomic.atransaction()
        assert isinstance(conn, psycopg.AsyncConnection)
        row = await (await conn.execute(self.insert, (key, cents))).fetchone()
        assert row is not None
        return int(row[0])

    def ledger(self) -> list[tuple[str, int]]:
        return self.pg.ledger()

    def ids(self) -> list[str]:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            rows = conn.execute(f"SELECT id FROM {self.pg.prefix}records").fetchall()
        return [str(r[0]) for r in rows]


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "postgres":
        for pg in make_db():
            yield PostgresWorld(pg.store, pg=pg)
        return
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "app.db", clock=clock)
    other = SQLiteStore(tmp_path / "app.db", clock=clock)
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TABLE ledger (key TEXT, cents INTEGER)")
    yield SQLiteWorld(store, other=other, clock=clock)


# -- one set of routes, written once as steps that a sync or an async driver performs ------

Steps = Generator[tuple[Any, ...], Any, tuple[int, dict[str, Any]]]


def route(world: World, path: str, fail_once: bool) -> Steps:
    """The body of every route: yields the steps that touch the database (``write``,
    ``phase``, ``begin``, ``take_over``) and returns (status, JSON body)."""
    world.runs.append(path)
    match path:
        case "/charge":
            return 201, {"row": (yield "write", path, 1)}
        case "/error500":
            yield "write", path, 1
            return 500, {"error": "upstream"}
        case "/crash":
            yield "write", path, 1
            raise RuntimeError("boom")
        case "/phased":
            resumed = atomic.current_phase()
            if not atomic.reached("one"):
                yield "write", path, 1
                yield "phase", "one"
            if fail_once and world.runs.count(path) == 1:
                raise RuntimeError("dies in phase two")
            yield "write", path, 2
            return 201, {"resumed": resumed, "key": atomic.derived_key("one")}
        case "/taken-before-begin":
            yield ("take_over",)
            yield ("begin",)  # refused: ClaimTakenOver (Flask makes it a 500)
            raise AssertionError("unreachable")
        case "/taken-before-commit":
            yield ("take_over",)
            return 201, {"stored": "never"}
        case "/plain":
            return 201, {"untouched": True}
    raise AssertionError(path)


def run(world: World, path: str, fail_once: bool) -> tuple[int, dict[str, Any]]:
    ops: dict[str, Callable[..., Any]] = {
        "write": world.write,
        "phase": atomic.phase,
        "begin": atomic.transaction,
        "take_over": world.take_over,
    }
    steps, result = route(world, path, fail_once), None
    try:
        while True:
            op, *args = steps.send(result)
            result = ops[op](*args)
    except StopIteration as done:
        return done.value


async def arun(world: World, path: str, fail_once: bool) -> tuple[int, dict[str, Any]]:
    ops: dict[str, Callable[..., Awaitable[Any]]] = {
        "write": world.awrite,
        "phase": atomic.aphase,
        "begin": atomic.atransaction,
        "take_over": lambda: asyncio.to_thread(world.take_over),
    }
    steps, result = route(world, path, fail_once), None
    try:
        while True:
            op, *args = steps.send(result)
            result = await ops[op](*args)
    except StopIteration as done:
        return done.value


def asgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    async def endpoint(request: Request) -> JSONResponse:
        fail_once = request.query_params.get("fail_once") == "1"
        if world.async_asgi:
            status, body = await arun(world, request.url.path, fail_once)
        else:
            status, body = run(world, request.url.path, fail_once)
        return JSONResponse(body, status_code=status)

    app = Starlette(routes=[Route(p, endpoint, methods=["POST"]) for p in PATHS])
    app.add_middleware(ASGIIdempotencyMiddleware, store=world.store, policy=POLICY, atomic=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return lambda: httpx.AsyncClient(transport=transport, base_url="http://t")


def wsgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    app = flask.Flask("atomic")

    @app.post("/<path:name>")
    def endpoint(name: str) -> Any:
        status, body = run(world, "/" + name, flask.request.args.get("fail_once") == "1")
        return flask.jsonify(body), status

    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=world.store, policy=POLICY, atomic=True
    )
    transport = httpx.WSGITransport(app=app, raise_app_exceptions=False)

    class Sync(httpx.AsyncClient):
        """An async face over the sync WSGI transport, so both doors share the tests."""

        def __init__(self) -> None:
            super().__init__(base_url="http://t")
            self._sync = httpx.Client(transport=transport, base_url="http://t")

        async def post(self, url: Any, **kw: Any) -> httpx.Response:  # type: ignore[override]
            return await asyncio.to_thread(self._sync.post, url, **kw)

    return Sync


@pytest.fixture(params=["asgi", "wsgi"])
async def client(request: pytest.FixtureRequest, world: World) -> AsyncIterator[httpx.AsyncClient]:
    make = asgi_door(world) if request.param == "asgi" else wsgi_door(world)
    async with make() as c:
        yield c


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_the_write_commits_with_the_record_and_replays(
    client: httpx.AsyncClient, world: World
) -> None:
    first = await client.post("/charge", headers=keyed("k1"))
    assert first.status_code == 201
    assert first.json() == {"row": 1}
    again = await client.post("/charge", headers=keyed("k1"))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert world.ledger() == [("/charge", 1)]
    assert world.runs == ["/charge"]


@pytest.mark.parametrize("path", ["/error500", "/crash"])
async def test_a_5xx_or_an_exception_rolls_back_the_writes_and_releases(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    first = await client.post(path, headers=keyed("k2"))
    assert first.status_code == 500
    assert world.ledger() == []
    again = await client.post(path, headers=keyed("k2"))
    assert again.status_code == 500
    assert world.runs == [path, path]  # released: the retry ran again
    assert world.ledger() == []


async def test_a_retry_resumes_after_the_last_committed_phase(
    client: httpx.AsyncClient, world: World
) -> None:
    first = await client.post("/phased?fail_once=1", headers=keyed("k3"))
    assert first.status_code == 500
    assert world.ledger() == [("/phased", 1)]  # phase one committed, phase two undone
    again = await client.post("/phased?fail_once=1", headers=keyed("k3"))
    assert again.status_code == 201
    assert again.json()["resumed"] == "one"
    assert world.ledger() == [("/phased", 1), ("/phased", 2)]
    fresh = await client.post("/phased", headers=keyed("k4"))
    assert fresh.json()["resumed"] is None
    assert fresh.json()["key"] != again.json()["key"]  # derived from each record


@pytest.mark.parametrize("path", ["/taken-before-begin", "/taken-before-commit"])
async def test_a_taken_over_attempt_answers_409_and_commits_nothing(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    reply = await client.post(path, headers=keyed("k5"))
    assert reply.status_code == 409
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["type"] == PROBLEM_TYPE
    assert "took it over" in reply.json()["detail"]
    assert world.ledger() == []
    # The record is the new holder's, still in flight: the old attempt stored nothing.
    (id,) = world.ids()
    record = world.store.get(id)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.response is None


async def test_a_handler_that_never_asks_still_completes_in_one_transaction(
    client: httpx.AsyncClient, world: World
) -> None:
    first = await client.post("/plain", headers=keyed("k6"))
    again = await client.post("/plain", headers=keyed("k6"))
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert world.runs == ["/plain"]


def test_idempotent_functions_write_in_the_record_transaction(world: World) -> None:
    """``@idempotent(..., atomic=True)``, sync and async."""

    @idempotent(world.store, key=lambda key, fail: key, policy=POLICY, atomic=True)
    def charge(key: str, fail: bool) -> int:
        world.runs.append(key)
        row = world.write(key, 7)
        if fail:
            raise RuntimeError("declined upstream")
        return row

    @idempotent(world.store, key=lambda key, take: key, policy=POLICY, atomic=True)
    async def acharge(key: str, take: bool) -> int:
        world.runs.append(key)
        if take:
            await asyncio.to_thread(world.take_over)
        return await world.awrite(key, 9)

    first = charge("s", False)
    assert charge("s", False) == first
    with pytest.raises(RuntimeError):
        charge("f", True)
    assert asyncio.run(acharge("a", False)) == asyncio.run(acharge("a", False))
    with pytest.raises(ClaimTakenOver):
        asyncio.run(acharge("t", True))
    assert world.ledger() == [("s", 7), ("a", 9)]
    assert world.runs == ["s", "f", "a", "t"]


def test_atomic_needs_a_store_that_can_give_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(AtomicUnsupported, match="MemoryStore"):
        ASGIIdempotencyMiddleware(
            app, store=MemoryStore(), atomic=True, policy=Policy(scope=shared_scope)
        )
    with pytest.raises(AtomicUnsupported, match="MemoryStore"):
        WSGIIdempotencyMiddleware(
            lambda e, s: [], store=MemoryStore(), atomic=True, policy=Policy(scope=shared_scope)
        )


def raw_asgi(world: World, raise_after: str) -> Callable[[], httpx.AsyncClient]:
    """A bare ASGI app (no framework to turn errors into answers): it writes, sends part or all
    of its answer as ``raise_after`` says, then raises."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        row = await world.awrite("raw", 1) if world.async_asgi else world.write("raw", 1)
        world.runs.append("raw")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        if raise_after == "whole":
            await send({"type": "http.response.body", "body": str(row).encode()})
        raise RuntimeError(f"raised after the {raise_after} answer")

    mw = ASGIIdempotencyMiddleware(app, store=world.store, policy=POLICY, atomic=True)
    transport = httpx.ASGITransport(app=mw, raise_app_exceptions=False)
    return lambda: httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_an_app_raising_after_its_whole_answer_keeps_it_committed(world: World) -> None:
    async with raw_asgi(world, "whole")() as client:
        first = await client.post("/raw", headers=keyed("r1"))
        again = await client.post("/raw", headers=keyed("r1"))
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert world.ledger() == [("raw", 1)]
    assert world.runs == ["raw"]


async def test_an_app_raising_before_its_whole_answer_rolls_back_and_releases(
    world: World,
) -> None:
    async with raw_asgi(world, "started")() as client:
        first = await client.post("/raw", headers=keyed("r2"))
        again = await client.post("/raw", headers=keyed("r2"))
    assert first.status_code == again.status_code == 500  # nothing was sent: the server's 500
    assert world.ledger() == []
    assert world.runs == ["raw", "raw"]  # released: the retry ran again


async def test_background_tasks_run_after_the_commit(world: World) -> None:
    """Starlette runs a response's background task once its last body message was sent: the
    record and the write are committed by then."""
    from starlette.background import BackgroundTask

    seen: list[Any] = []

    def after() -> None:
        (id,) = world.ids()
        record = world.store.get(id)
        seen.append((world.ledger(), record.state if record else None))

    async def endpoint(request: Request) -> JSONResponse:
        row = await world.awrite("bg", 1) if world.async_asgi else world.write("bg", 1)
        return JSONResponse({"row": row}, status_code=201, background=BackgroundTask(after))

    app = Starlette(routes=[Route("/bg", endpoint, methods=["POST"])])
    app.add_middleware(ASGIIdempotencyMiddleware, store=world.store, policy=POLICY, atomic=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reply = await client.post("/bg", headers=keyed("b1"))
    assert reply.status_code == 201
    assert seen == [([("bg", 1)], State.COMPLETED)]

"""Atomic completion on PostgreSQL behind the ASGI and WSGI middlewares and ``@idempotent``
(SPEC 12, 13, 13a): the handler writes on the store's ``psycopg`` connection (an
``AsyncConnection`` under ASGI), the record commits with it, a 5xx rolls both back, and an
attempt whose claim was taken over answers 409 with nothing committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import flask
import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from onceonly import Policy, atomic
from onceonly.atomic._context import current_unit
from onceonly.errors import ClaimTakenOver
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware
from onceonly.records import State
from onceonly.tools import idempotent

from ._pg import PgDb, pg

__all__ = ["pg"]

POLICY = Policy(lease=10.0)
PROBLEM_TYPE = "https://onceonly.dev/problems/request-in-flight"
PATHS = ["/charge", "/error500", "/crash", "/phased", "/taken", "/plain"]


@dataclass
class World:
    pg: PgDb
    runs: list[str] = field(default_factory=list)

    @property
    def insert(self) -> str:
        return f"INSERT INTO {self.pg.ledger_table} (key, cents) VALUES (%s, %s) RETURNING id"

    def take_over(self) -> None:
        """What a retry does once this attempt's lease lapsed: a new token on the record."""
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {self.pg.prefix}records SET token = token + 1 WHERE id = %s",
                (current_unit().id,),
            )

    def ids(self) -> list[str]:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            rows = conn.execute(f"SELECT id FROM {self.pg.prefix}records").fetchall()
        return [str(r[0]) for r in rows]


@pytest.fixture
def world(pg: PgDb) -> World:
    return World(pg)


def asgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    async def write(path: str, cents: int) -> int:
        conn = await atomic.atransaction()
        assert isinstance(conn, psycopg.AsyncConnection)
        row = await (await conn.execute(world.insert, (path, cents))).fetchone()
        return int(row[0])

    async def endpoint(request: Request) -> JSONResponse:
        path = request.url.path
        world.runs.append(path)
        if path == "/charge":
            return JSONResponse({"row": await write(path, 1)}, status_code=201)
        if path == "/error500":
            await write(path, 1)
            return JSONResponse({"error": "upstream"}, status_code=500)
        if path == "/crash":
            await write(path, 1)
            raise RuntimeError("boom")
        if path == "/phased":
            resumed = atomic.current_phase()
            if not atomic.reached("one"):
                await write(path, 1)
                await atomic.aphase("one")
            if world.runs.count(path) == 1:
                raise RuntimeError("dies in phase two")
            await write(path, 2)
            return JSONResponse({"resumed": resumed}, status_code=201)
        if path == "/taken":
            await asyncio.to_thread(world.take_over)
            await atomic.atransaction()  # refused: ClaimTakenOver
        return JSONResponse({"untouched": True}, status_code=201)

    app = Starlette(routes=[Route(p, endpoint, methods=["POST"]) for p in PATHS])
    app.add_middleware(IdempotencyMiddleware, store=world.pg.store, policy=POLICY, atomic=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return lambda: httpx.AsyncClient(transport=transport, base_url="http://t")


def wsgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    app = flask.Flask("pgatomic")

    def write(path: str, cents: int) -> int:
        conn = atomic.transaction()
        assert isinstance(conn, psycopg.Connection)
        row = conn.execute(world.insert, (path, cents)).fetchone()
        assert row is not None
        return int(row[0])

    @app.post("/<name>")
    def endpoint(name: str) -> Any:
        path = "/" + name
        world.runs.append(path)
        if path == "/charge":
            return flask.jsonify({"row": write(path, 1)}), 201
        if path == "/error500":
            write(path, 1)
            return flask.jsonify({"error": "upstream"}), 500
        if path == "/crash":
            write(path, 1)
            raise RuntimeError("boom")
        if path == "/phased":
            resumed = atomic.current_phase()
            if not atomic.reached("one"):
                write(path, 1)
                atomic.phase("one")
            if world.runs.count(path) == 1:
                raise RuntimeError("dies in phase two")
            write(path, 2)
            return flask.jsonify({"resumed": resumed}), 201
        if path == "/taken":
            world.take_over()
            atomic.transaction()  # refused: ClaimTakenOver (Flask makes it a 500)
        return flask.jsonify({"untouched": True}), 201

    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=world.pg.store, policy=POLICY, atomic=True
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
    again = await client.post("/charge", headers=keyed("k1"))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert world.pg.ledger() == [("/charge", 1)]
    assert world.runs == ["/charge"]


@pytest.mark.parametrize("path", ["/error500", "/crash"])
async def test_a_5xx_or_an_exception_rolls_back_the_writes_and_releases(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    assert (await client.post(path, headers=keyed("k2"))).status_code == 500
    assert world.pg.ledger() == []
    assert (await client.post(path, headers=keyed("k2"))).status_code == 500
    assert world.runs == [path, path]  # released: the retry ran again
    assert world.pg.ledger() == []


async def test_a_retry_resumes_after_the_last_committed_phase(
    client: httpx.AsyncClient, world: World
) -> None:
    first = await client.post("/phased", headers=keyed("k3"))
    assert first.status_code == 500
    assert world.pg.ledger() == [("/phased", 1)]  # phase one committed, phase two undone
    again = await client.post("/phased", headers=keyed("k3"))
    assert again.status_code == 201
    assert again.json() == {"resumed": "one"}
    assert world.pg.ledger() == [("/phased", 1), ("/phased", 2)]


async def test_a_taken_over_attempt_answers_409_and_commits_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    reply = await client.post("/taken", headers=keyed("k5"))
    assert reply.status_code == 409
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["type"] == PROBLEM_TYPE
    assert world.pg.ledger() == []
    (id,) = world.ids()
    record = world.pg.store.get(id)
    assert record is not None
    assert record.state is State.IN_FLIGHT  # the new holder's, untouched
    assert record.response is None


async def test_a_handler_that_never_asks_still_completes(
    client: httpx.AsyncClient, world: World
) -> None:
    first = await client.post("/plain", headers=keyed("k6"))
    again = await client.post("/plain", headers=keyed("k6"))
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert world.runs == ["/plain"]


def test_idempotent_functions_write_in_the_record_transaction(world: World) -> None:
    """``@idempotent(..., atomic=True)`` on the PostgreSQL store, sync and async."""
    store = world.pg.store

    @idempotent(store, key=lambda key, fail: key, policy=POLICY, atomic=True)
    def charge(key: str, fail: bool) -> int:
        world.runs.append(key)
        row = atomic.transaction().execute(world.insert, (key, 7)).fetchone()
        if fail:
            raise RuntimeError("declined upstream")
        return int(row[0])

    @idempotent(store, key=lambda key, take: key, policy=POLICY, atomic=True)
    async def acharge(key: str, take: bool) -> int:
        world.runs.append(key)
        if take:
            await asyncio.to_thread(world.take_over)
        conn = await atomic.atransaction()
        row = await (await conn.execute(world.insert, (key, 9))).fetchone()
        return int(row[0])

    first = charge("s", False)
    assert charge("s", False) == first
    with pytest.raises(RuntimeError):
        charge("f", True)
    assert asyncio.run(acharge("a", False)) == asyncio.run(acharge("a", False))
    with pytest.raises(ClaimTakenOver):
        asyncio.run(acharge("t", True))
    assert world.pg.ledger() == [("s", 7), ("a", 9)]
    assert world.runs == ["s", "f", "a", "t"]

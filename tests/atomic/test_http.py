"""Atomic completion behind the ASGI and WSGI middlewares (SPEC 12, 13, 13a).

The same Starlette-style scenarios run through ``IdempotencyMiddleware(..., atomic=True)``
(ASGI, a Starlette app over httpx's ASGI transport) and the WSGI twin (a Flask app over
httpx's WSGI transport), on a SQLite file with a fake clock so takeovers are on cue.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from onceonly import MemoryStore, Policy, atomic
from onceonly.atomic._context import current_unit
from onceonly.errors import AtomicUnsupported
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware
from onceonly.records import Claimed, State
from onceonly.stores.sqlite import SQLiteStore
from storekit import FakeClock

POLICY = Policy(lease=10.0)
PROBLEM_TYPE = "https://onceonly.dev/problems/request-in-flight"


@dataclass
class World:
    """What the handlers share: the store, a second handle on it (another process), the clock."""

    store: SQLiteStore
    other: SQLiteStore
    clock: FakeClock
    runs: list[str]

    def take_over(self) -> None:
        """Let this execution's lease lapse and a retry take the key over."""
        unit = current_unit()
        record = self.store.get(unit.id)
        assert record is not None
        self.clock.advance(POLICY.lease_s + 1)
        assert isinstance(self.other.claim(unit.id, record.fingerprint, POLICY.lease_s), Claimed)

    def ledger(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.store.path) as raw:
            return raw.execute("SELECT path, note FROM ledger ORDER BY rowid").fetchall()


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "app.db", clock=clock)
    other = SQLiteStore(tmp_path / "app.db", clock=clock)
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TABLE ledger (path TEXT, note TEXT)")
    return World(store, other, clock, [])


# -- one set of handlers, written against a tiny facade so ASGI and WSGI share them ------


def charge(world: World, path: str, fail_once: bool) -> tuple[int, dict[str, Any]]:
    """The body of every route; returns (status, JSON body)."""
    world.runs.append(path)
    match path:
        case "/charge":
            cur = atomic.transaction().execute("INSERT INTO ledger VALUES (?, 'x')", (path,))
            return 201, {"row": cur.lastrowid}
        case "/error500":
            atomic.transaction().execute("INSERT INTO ledger VALUES (?, 'x')", (path,))
            return 500, {"error": "upstream"}
        case "/crash":
            atomic.transaction().execute("INSERT INTO ledger VALUES (?, 'x')", (path,))
            raise RuntimeError("boom")
        case "/phased":
            resumed = atomic.current_phase()
            if not atomic.reached("one"):
                atomic.transaction().execute("INSERT INTO ledger VALUES (?, 'one')", (path,))
                atomic.phase("one")
            if fail_once and world.runs.count(path) == 1:
                raise RuntimeError("dies in phase two")
            atomic.transaction().execute("INSERT INTO ledger VALUES (?, 'two')", (path,))
            return 201, {"resumed": resumed, "key": atomic.derived_key("one")}
        case "/taken-before-begin":
            world.take_over()
            atomic.transaction()  # refused: ClaimTakenOver
            raise AssertionError("unreachable")
        case "/taken-before-commit":
            world.take_over()
            return 201, {"stored": "never"}
        case "/plain":
            return 201, {"untouched": True}
    raise AssertionError(path)


def asgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    async def endpoint(request: Request) -> JSONResponse:
        fail_once = request.query_params.get("fail_once") == "1"
        status, body = charge(world, request.url.path, fail_once)
        return JSONResponse(body, status_code=status)

    paths = [
        "/charge",
        "/error500",
        "/crash",
        "/phased",
        "/taken-before-begin",
        "/taken-before-commit",
        "/plain",
    ]
    app = Starlette(routes=[Route(p, endpoint, methods=["POST"]) for p in paths])
    app.add_middleware(IdempotencyMiddleware, store=world.store, policy=POLICY, atomic=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return lambda: httpx.AsyncClient(transport=transport, base_url="http://t")


def wsgi_door(world: World) -> Callable[[], httpx.AsyncClient]:
    app = flask.Flask("atomic")

    @app.post("/<path:name>")
    def endpoint(name: str) -> Any:
        status, body = charge(world, "/" + name, flask.request.args.get("fail_once") == "1")
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
            return self._sync.post(url, **kw)

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
    assert world.ledger() == [("/charge", "x")]
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
    assert world.ledger() == [("/phased", "one")]  # phase one committed, phase two undone
    again = await client.post("/phased?fail_once=1", headers=keyed("k3"))
    assert again.status_code == 201
    assert again.json()["resumed"] == "one"
    assert world.ledger() == [("/phased", "one"), ("/phased", "two")]
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
    (id,) = {
        r[0] for r in sqlite3.connect(world.store.path).execute("SELECT id FROM onceonly_records")
    }
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


def test_atomic_needs_a_store_that_can_give_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(AtomicUnsupported, match="MemoryStore"):
        IdempotencyMiddleware(app, store=MemoryStore(), atomic=True)
    with pytest.raises(AtomicUnsupported, match="MemoryStore"):
        WSGIIdempotencyMiddleware(lambda e, s: [], store=MemoryStore(), atomic=True)

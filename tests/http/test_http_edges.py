"""Edges of the adapters that the rule-by-rule suite does not reach through a test client.

- a WSGI server that closes the response without iterating it (client gone before the first
  write) must still settle the claim and stop its heartbeat;
- the legacy WSGI ``write()`` callable is captured and replayed like returned chunks;
- an ASGI client that disconnects while the body is being buffered gets nothing, and nothing
  is claimed; one that leaves mid-response (a 2.4 ``send`` error, or the server cancelling the
  request) leaves the record unreplayable, since the handler ran;
- a SQLite store whose file became unusable answers 503 under both adapters (SPEC 17).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from kit.doors import SpyStore
from kit.scopes import shared_id
from kit.stores import FAR
from retrysafe._policy import Policy
from retrysafe._records import State
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.sqlite import SQLiteStore

BODY = b'{"amount": 100}'


def _environ(key: str = "k-1") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/pay",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_IDEMPOTENCY_KEY": key,
        "wsgi.input": io.BytesIO(BODY),
    }


def _call_wsgi(mw: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    result = mw(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started[-1][0], started[-1][1], body


def test_wsgi_response_closed_without_iteration_settles_the_claim(kit):
    store = SpyStore(kit.store)
    runs = 0

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal runs
        runs += 1
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    policy = Policy(
        scope=shared_scope, ttl=FAR * kit.tick, lease=FAR * kit.tick, wait=0.1 * kit.tick
    )
    mw = WSGIIdempotencyMiddleware(app, store=store, policy=policy)
    result = mw(_environ(), lambda status, headers, exc=None: None)
    result.close()  # type: ignore[attr-defined]  # the server gave up before writing anything
    record = store.get(shared_id(store, "k-1"))
    assert record is not None
    assert record.state is not State.IN_FLIGHT
    # The handler ran but its response never left: it must not run again, nor hang a retry.
    status, _, body = _call_wsgi(mw, _environ())
    assert status.startswith("409")
    assert b"unreplayable" in body
    assert runs == 1


def test_wsgi_generator_app_closed_before_it_started_releases_the_claim(kit):
    store = SpyStore(kit.store)
    runs = 0

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        nonlocal runs
        runs += 1  # a generator app: nothing here runs until the first iteration
        start_response("201 Created", [("Content-Type", "application/json")])
        yield b'{"ok": true}'

    mw = WSGIIdempotencyMiddleware(
        app, store=store, policy=Policy(scope=shared_scope, ttl=FAR * kit.tick)
    )
    result = mw(_environ(), lambda status, headers, exc=None: None)
    result.close()  # type: ignore[attr-defined]
    assert runs == 0
    assert store.get(shared_id(store, "k-1")) is None  # released: the operation never ran
    status, headers, _body = _call_wsgi(mw, _environ())
    assert status.startswith("201")
    assert ("idempotent-replayed", "true") not in headers
    assert runs == 1


def test_wsgi_generator_app_sees_the_current_key_while_it_runs(kit):
    from retrysafe import current_key

    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(current_key())  # runs on the first iteration, after the middleware returned
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"one"
        seen.append(current_key())
        yield b"two"

    store = SpyStore(kit.store)
    mw = WSGIIdempotencyMiddleware(
        app, store=store, policy=Policy(scope=shared_scope, ttl=FAR * kit.tick)
    )
    status, _, body = _call_wsgi(mw, _environ("gen-key"))
    assert (status, body) == ("201 Created", b"onetwo")
    assert seen == ["gen-key", "gen-key"]
    assert current_key() is None
    assert store.count("complete") == 1  # settled once, although close() came after the end
    assert store.count("release") == 0


def test_wsgi_legacy_write_callable_is_captured_and_replayed(kit):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then returned"]

    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        return written.append

    mw = WSGIIdempotencyMiddleware(
        app, store=kit.store, policy=Policy(scope=shared_scope, ttl=FAR * kit.tick)
    )
    first = b"".join(mw(_environ(), start_response))
    assert b"".join(written) + first == b"written, then returned"
    _status, headers, body = _call_wsgi(mw, _environ())
    assert ("idempotent-replayed", "true") in headers
    assert body == b"written, then returned"


async def test_asgi_disconnect_while_buffering_the_body_answers_nothing(kit):
    store = SpyStore(kit.store)
    ran = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran = True

    mw = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    messages = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/pay",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k-2")],
    }
    await asyncio.wait_for(mw(scope, receive, send), 5)
    assert sent == []
    assert not ran
    assert store.count("claim") == 0


def _broken_sqlite(tmp_path: Path) -> SQLiteStore:
    """A SQLite store whose file was replaced by something that is not a database."""
    path = tmp_path / "broken.db"
    store = SQLiteStore(path)
    store.close()
    for leftover in tmp_path.glob("broken.db*"):
        leftover.unlink()
    path.write_bytes(b"this is not a SQLite database " * 200)
    return store


def test_wsgi_unusable_sqlite_file_is_503(tmp_path):
    ran = False

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal ran
        ran = True
        start_response("201 Created", [])
        return [b""]

    store = _broken_sqlite(tmp_path)
    try:
        mw = WSGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
        status, headers, body = _call_wsgi(mw, _environ())
    finally:
        store.close()
    assert status.startswith("503")
    assert ("retry-after", "5") in headers
    assert ("content-type", "application/problem+json") in headers
    assert b"store-unavailable" in body
    assert not ran


async def test_asgi_unusable_sqlite_file_is_503(tmp_path):
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    ran = False

    async def endpoint(request: Any) -> Response:
        nonlocal ran
        ran = True
        return Response(status_code=201)

    store = _broken_sqlite(tmp_path)
    app = Starlette(routes=[Route("/pay", endpoint, methods=["POST"])])
    app.add_middleware(ASGIIdempotencyMiddleware, store=store, policy=Policy(scope=shared_scope))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            reply = await client.post("/pay", content=BODY, headers={"Idempotency-Key": "k-3"})
    finally:
        store.close()
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["type"].endswith(":store-unavailable")
    assert not ran


async def test_asgi_client_gone_mid_stream_on_a_spec_2_4_server_keeps_the_record(kit):
    """ASGI 2.4 servers raise an OSError from ``send`` once the client is gone (Starlette turns
    it into ClientDisconnect). The handler ran: its record stays, unreplayable (SPEC 15)."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    runs = 0

    async def parts() -> Any:
        yield b"first"
        yield b"second"

    async def endpoint(request: Any) -> StreamingResponse:
        nonlocal runs
        runs += 1
        return StreamingResponse(parts(), media_type="text/plain")

    store = SpyStore(kit.store)
    app = Starlette(routes=[Route("/pay", endpoint, methods=["POST"])])
    app.add_middleware(
        ASGIIdempotencyMiddleware,
        store=store,
        policy=Policy(scope=shared_scope, ttl=FAR * kit.tick),
    )

    async def call(gone_after: int | None) -> tuple[list[Any], Exception | None]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/pay",
            "raw_path": b"/pay",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"idempotency-key", b"k-4"), (b"host", b"testserver")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        messages = [{"type": "http.request", "body": b""}]
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if gone_after is not None and len(sent) >= gone_after:
                raise OSError("client disconnected")
            sent.append(message)

        try:
            await app(scope, receive, send)
        except Exception as exc:  # the server logs it; the client is gone anyway
            return sent, exc
        return sent, None

    first, error = await call(gone_after=2)  # the start and the first chunk reach the client
    assert error is not None  # the disconnect still reaches the server
    assert [m["type"] for m in first] == ["http.response.start", "http.response.body"]
    record = store.get(shared_id(store, "k-4"))
    assert record is not None
    assert record.state is State.UNREPLAYABLE
    second, error = await call(gone_after=None)
    assert error is None
    assert second[0]["status"] == 409
    assert b"unreplayable" in second[1]["body"]
    assert runs == 1


async def test_asgi_request_cancelled_mid_response_keeps_the_record(kit):
    """Some servers cancel the app's task when the client leaves. Once the response started the
    handler has run: the record stays (unreplayable) and a retry is not run again (SPEC 15);
    cancelled before it answered, the claim is released so the retry runs (SPEC 12)."""
    store = SpyStore(kit.store)
    runs = 0
    started_answer = asyncio.Event()
    started_handler = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal runs
        runs += 1
        started_handler.set()
        if scope["path"] == "/answering":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            started_answer.set()
        await asyncio.Event().wait()  # until cancelled

    mw = ASGIIdempotencyMiddleware(
        app, store=store, policy=Policy(scope=shared_scope, ttl=FAR * kit.tick)
    )

    def scope(path: str, key: bytes) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "POST",
            "path": path,
            "query_string": b"",
            "headers": [(b"idempotency-key", key)],
        }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    answering = asyncio.create_task(mw(scope("/answering", b"k-5"), receive, send))
    await asyncio.wait_for(started_answer.wait(), 5)
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    record = store.get(shared_id(store, "k-5"))
    assert record is not None
    assert record.state is State.UNREPLAYABLE

    started_handler.clear()
    silent = asyncio.create_task(mw(scope("/silent", b"k-6"), receive, send))
    await asyncio.wait_for(started_handler.wait(), 5)
    silent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await silent
    assert store.get(shared_id(store, "k-6")) is None  # released: a retry runs again
    assert runs == 2

"""Streaming through the ASGI middleware under a real server (uvicorn on a loopback port).

SPEC 15: a streamed response passes through chunk by chunk — the client holds the first chunk
before the application produces the second — and a client that disconnects mid-stream neither
crashes the middleware nor leaves the record stuck in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from kit.doors import SpyStore
from kit.scopes import shared_id
from kit.stores import FAR
from retrysafe._policy import Policy
from retrysafe._records import State
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware

pytestmark = pytest.mark.slow


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server that says when it is listening (no polling for readiness)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class Server:
    """uvicorn serving ``app`` on 127.0.0.1 and a free port, in a thread with its own loop."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", http="h11"
        )
        self.server = _Uvicorn(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        assert self.server.ready.wait(10), "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


class Chunks:
    """A streaming body whose second chunk waits until the test says the first arrived."""

    def __init__(self) -> None:
        self.first_received = threading.Event()
        self.finished = threading.Event()

    def __call__(self) -> Iterator[bytes]:
        yield b"first chunk\n"
        assert self.first_received.wait(10), "client never saw the first chunk on its own"
        yield b"second chunk\n"
        self.finished.set()


def build(store: Any, policy: Policy, chunks: Chunks) -> Any:
    async def stream(request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(chunks(), media_type="text/plain")

    async def forever() -> AsyncIterator[bytes]:
        yield b"only chunk\n"
        await asyncio.Event().wait()  # never set: ends when the client goes away
        yield b"unreachable"

    async def hanging(request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(forever(), media_type="text/plain")

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    return Starlette(
        routes=[
            Route("/stream", stream, methods=["POST"]),
            Route("/hang", hanging, methods=["POST"]),
            Route("/plain", plain, methods=["POST"]),
        ],
        middleware=[Middleware(ASGIIdempotencyMiddleware, store=store, policy=policy)],
    )


def _policy(kit: Any) -> Policy:
    return Policy(scope=shared_scope, ttl=FAR * kit.tick, lease=FAR * kit.tick, wait=0.2 * kit.tick)


async def test_streaming_response_passes_chunk_by_chunk_under_uvicorn(kit):
    chunks = Chunks()
    store = SpyStore(kit.store)
    with Server(build(store, _policy(kit), chunks)) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            async with client.stream("POST", "/stream", headers={"Idempotency-Key": "s-1"}) as r:
                assert r.status_code == 200
                received = []
                async for piece in r.aiter_raw():
                    received.append(piece)
                    if b"first chunk\n" in b"".join(received):
                        chunks.first_received.set()
                assert b"".join(received) == b"first chunk\nsecond chunk\n"
            assert chunks.finished.is_set()
            # A 200 stream of 25 bytes fits the cache: its duplicate replays it whole.
            again = await client.post("/stream", headers={"Idempotency-Key": "s-1"})
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == b"first chunk\nsecond chunk\n"


async def test_client_disconnect_mid_stream_leaves_the_record_settled(kit):
    store = SpyStore(kit.store)
    policy = _policy(kit)
    with Server(build(store, policy, Chunks())) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            async with client.stream("POST", "/hang", headers={"Idempotency-Key": "h-1"}) as r:
                assert r.status_code == 200
                async for piece in r.aiter_raw():
                    assert piece.startswith(b"only chunk")
                    break  # leave mid-stream: closing the response drops the connection
            await store.until("complete", 1, timeout=10)  # settled, not left in flight
            record = store.get(shared_id(store, "h-1"))
            assert record is not None
            assert record.state is State.UNREPLAYABLE  # the handler ran: never run it again
            duplicate = await client.post("/hang", headers={"Idempotency-Key": "h-1"})
            assert duplicate.status_code == 409
            assert duplicate.json()["type"].endswith(":unreplayable")
            # The server and the middleware still serve keyed requests.
            fresh = await client.post("/plain", headers={"Idempotency-Key": "p-1"})
            assert fresh.status_code == 201
            assert (await client.post("/plain", headers={"Idempotency-Key": "p-1"})).headers[
                "idempotent-replayed"
            ] == "true"

"""A request cancelled while its record settles still settles it, and the answer's last body
message waits for the record (ASGI, every store kind)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from kit.scopes import shared_id
from retrysafe._policy import Policy
from retrysafe._records import State, StoredResponse
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.testing import RecordingStore

if TYPE_CHECKING:  # conftest is not importable as a module under every pytest invocation
    from kit.stores import StoreKit

KEY = "cancel-while-settling"


class GatedStore(RecordingStore):
    """Holds every completion until ``gate`` opens, so a test can cancel the request then."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.settling = asyncio.Event()
        self.gate = asyncio.Event()
        self.settled = asyncio.Event()

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        self.settling.set()
        await self.gate.wait()
        done = await super().acomplete(id, token, response, ttl, retention)
        self.settled.set()
        return done


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"charged"})


def request_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "query_string": b"",
        "headers": [(b"idempotency-key", KEY.encode())],
    }


async def test_cancelled_request_still_completes_its_record(kit: StoreKit) -> None:
    store = GatedStore(kit.store)
    middleware = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = asyncio.create_task(middleware(request_scope(), receive, send))
    async with asyncio.timeout(5):
        await store.settling.wait()
    request.cancel()  # e.g. the server shuts down while the record is being written
    with pytest.raises(asyncio.CancelledError):
        await request
    assert not store.settled.is_set()

    store.gate.set()
    async with asyncio.timeout(5):
        await store.settled.wait()

    record = kit.store.get(shared_id(kit.store, KEY))
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body == b"charged"
    # The answer waits for the record (an answer in one body message, its start too: an
    # unstorable result could still become a 503): cancelled before the completion returned,
    # the client never got the answer - and a retry replays it.
    assert sent == []


async def test_the_last_body_message_goes_out_only_once_the_record_is_stored(
    kit: StoreKit,
) -> None:
    """A client that has the whole answer can always have it replayed: no retry of a request
    it saw answered runs the handler again, even if the process died right after answering."""
    store = GatedStore(kit.store)
    middleware = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            record = kit.store.get(shared_id(kit.store, KEY))
            assert record is not None
            assert record.state is State.COMPLETED  # stored before the client sees the end
        sent.append(message)

    request = asyncio.create_task(middleware(request_scope(), receive, send))
    async with asyncio.timeout(5):
        await store.settling.wait()
    assert sent == []  # the answer (start and its one body message) is held meanwhile
    store.gate.set()
    async with asyncio.timeout(5):
        await request
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"charged"

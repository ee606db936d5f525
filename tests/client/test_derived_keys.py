"""The derived-key hook (SPEC 19, 29) through the layers that set the current key.

Each keyed scope — ``key_scope``, an ``@idempotent`` call, a request in the ASGI middleware —
numbers its downstream keys from 1, so a re-run of the same key sends the same downstream keys
and a nested scope leaves its parent's count alone.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import current_key, derive_key
from retrysafe._context import key_scope
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.client import AsyncIdempotentTransport, IdempotentTransport
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.tools import idempotent


class Downstream:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers["idempotency-key"])
        return httpx.Response(201)


def test_nested_scopes_keep_their_own_counts() -> None:
    down = Downstream()
    client = httpx.Client(transport=IdempotentTransport(httpx.MockTransport(down)))
    with key_scope("P"):
        client.post("http://d.test/a")
        with key_scope("K"):
            client.post("http://d.test/b")
        client.post("http://d.test/c")
    assert down.keys == [derive_key("P", "1"), derive_key("K", "1"), derive_key("P", "2")]
    assert current_key() is None


def test_setting_the_same_key_again_starts_over() -> None:
    down = Downstream()
    client = httpx.Client(transport=IdempotentTransport(httpx.MockTransport(down)))
    for _ in range(2):  # what a middleware or decorator does on a retried operation
        with key_scope("P"):
            assert type(current_key()) is str
            client.post("http://d.test/a")
            client.post("http://d.test/a")
    assert down.keys == [derive_key("P", "1"), derive_key("P", "2")] * 2


def test_an_idempotent_function_rerun_after_an_error_sends_the_same_keys() -> None:
    down = Downstream()
    client = httpx.Client(transport=IdempotentTransport(httpx.MockTransport(down)))
    runs: list[str | None] = []

    @idempotent(MemoryStore(), key=lambda order: order)
    def pay(order: str) -> str:
        runs.append(current_key())
        client.post("http://psp.test/authorize", json={"order": order})
        client.post("http://psp.test/capture", json={"order": order})
        if len(runs) == 1:
            raise RuntimeError("crashed after the downstream calls")  # releases the claim
        return "paid"

    with pytest.raises(RuntimeError):
        pay("o-1")
    assert pay("o-1") == "paid"
    assert pay("o-1") == "paid"  # replayed: the function and its calls do not run again
    assert len(runs) == 2
    parent = runs[0]
    assert parent is not None
    assert runs[1] == parent
    first = [derive_key(parent, "1"), derive_key(parent, "2")]
    assert down.keys == first + first


def test_a_handler_behind_the_middleware_derives_downstream_keys() -> None:
    down = Downstream()
    attempts: list[int] = []

    async def charge(request: Request) -> Response:
        transport = AsyncIdempotentTransport(httpx.MockTransport(down))
        async with httpx.AsyncClient(transport=transport) as client:
            await client.post("http://psp.test/charge", json={"n": 1})
        attempts.append(1)
        if len(attempts) == 1:
            return JSONResponse({"error": "later"}, status_code=503)  # released: retry runs
        return JSONResponse({"ok": True}, status_code=201)

    app = ASGIIdempotencyMiddleware(
        Starlette(routes=[Route("/charges", charge, methods=["POST"])]),
        store=MemoryStore(),
        policy=Policy(scope=shared_scope),
    )

    async def go() -> list[int]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test"
        ) as client:
            statuses = []
            for _ in range(3):
                r = await client.post("/charges", json={}, headers={"Idempotency-Key": "up-1"})
                statuses.append(r.status_code)
            return statuses

    assert asyncio.run(go()) == [503, 201, 201]
    assert down.keys == [derive_key("up-1", "1")] * 2  # the replay made no downstream call

"""The client against a real retrysafe server: uvicorn on loopback, the ASGI middleware, a ledger.

The server's default scope is a hash of the ``Authorization`` header, so a replay that did not
re-attach the live client's credentials would land in another scope and charge again: the
ledger counts prove the credentials came back and the key stayed the same.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.client_servers import serve_app
from retrysafe import Policy
from retrysafe._scopes import shared_scope
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentTransport,
    KeyMismatchResponse,
    RetriesExhausted,
    RetryPolicy,
)
from retrysafe.client.dlq import DeadLetterQueue, EntryState
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

CREDENTIALS = {"Authorization": "Bearer e2e-live"}


@dataclass
class Payments:
    """A toy payments service; ``mode`` is what the next charge does."""

    mode: str = "ok"  # "ok", "fail" (503 before charging), "slow" (charge, then answer late)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def charge(self, request: Request) -> Response:
        if self.mode == "fail":
            return JSONResponse({"error": "try later"}, status_code=503)
        body = await request.json()
        with self.lock:
            self.ledger.append(body)
            number = len(self.ledger)
        if self.mode == "slow":
            await asyncio.sleep(1.2)
        return JSONResponse({"charge": number, "amount": body["amount"]}, status_code=201)


@pytest.fixture(scope="module")
def payments() -> Iterator[tuple[Payments, str]]:
    service = Payments()
    app = Starlette(routes=[Route("/charges", service.charge, methods=["POST"])])
    policy = Policy(scope=shared_scope, wait=timedelta(seconds=0.2))
    wrapped = ASGIIdempotencyMiddleware(app, store=MemoryStore(), policy=policy)
    with serve_app(wrapped) as url:
        yield service, url


@pytest.fixture
def service(payments: tuple[Payments, str]) -> Payments:
    service = payments[0]
    service.mode = "ok"
    service.ledger.clear()
    return service


@pytest.fixture
def dlq(tmp_path: Path) -> Iterator[DeadLetterQueue]:
    queue = DeadLetterQueue(tmp_path / "dlq.db", rate=50.0)
    yield queue
    queue.close()


class Recording(httpx.HTTPTransport):
    """httpx's transport, noting the status of every answer."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = statuses

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = statuses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.statuses.append(response.status_code)
        return response


class Client:
    """Sync or async client with the idempotent transport, used through one sync interface."""

    def __init__(self, flavor: str, base: str, dlq: DeadLetterQueue | None, **kw: Any) -> None:
        self.flavor, self.base, self.dlq = flavor, base, dlq
        self.retry = kw.pop("retry", RetryPolicy(base=0.01, cap=0.05))
        self.timeout = kw.pop("timeout", httpx.Timeout(5.0))
        self.statuses: list[int] = []  # every answer the network gave

    def _sync(self) -> httpx.Client:
        t = IdempotentTransport(Recording(self.statuses), retry=self.retry, dlq=self.dlq)
        return httpx.Client(
            transport=t, base_url=self.base, headers=CREDENTIALS, timeout=self.timeout
        )

    def _async(self) -> httpx.AsyncClient:
        t = AsyncIdempotentTransport(AsyncRecording(self.statuses), retry=self.retry, dlq=self.dlq)
        return httpx.AsyncClient(
            transport=t, base_url=self.base, headers=CREDENTIALS, timeout=self.timeout
        )

    def post(self, **kw: Any) -> httpx.Response:
        if self.flavor == "sync":
            with self._sync() as c:
                return c.post("/charges", **kw)

        async def go() -> httpx.Response:
            async with self._async() as c:
                return await c.post("/charges", **kw)

        return asyncio.run(go())

    def replay(self, **kw: Any) -> Any:
        assert self.dlq is not None
        if self.flavor == "sync":
            with self._sync() as c:
                return self.dlq.replay(c, **kw)

        async def go() -> Any:
            async with self._async() as c:
                return await self.dlq.areplay(c, **kw)

        return asyncio.run(go())


def test_a_retry_of_a_charged_request_is_a_replay(
    flavor: str, payments: Any, service: Payments
) -> None:
    client = Client(flavor, payments[1], None)
    key = {"Idempotency-Key": f"e2e-once-{flavor}"}
    first = client.post(json={"amount": 10}, headers=key)
    again = client.post(json={"amount": 10}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert again.extensions["retrysafe"].replayed
    assert not first.extensions["retrysafe"].replayed
    assert len(service.ledger) == 1


def test_reused_key_with_another_body_raises_key_mismatch(
    flavor: str, payments: Any, service: Payments
) -> None:
    client = Client(flavor, payments[1], None)
    client.post(json={"amount": 10}, headers={"Idempotency-Key": f"e2e-mm-{flavor}"})
    with pytest.raises(KeyMismatchResponse) as caught:
        client.post(json={"amount": 99}, headers={"Idempotency-Key": f"e2e-mm-{flavor}"})
    assert caught.value.response.status_code == 422
    assert len(service.ledger) == 1


def test_parked_call_replays_once_with_the_same_key(
    flavor: str, payments: Any, service: Payments, dlq: DeadLetterQueue
) -> None:
    client = Client(flavor, payments[1], dlq)
    service.mode = "fail"
    with pytest.raises(RetriesExhausted) as caught:
        client.post(json={"amount": 25})
    entry_id = caught.value.parked
    assert entry_id is not None
    assert service.ledger == []  # nothing charged while parked
    service.mode = "ok"
    [result] = client.replay(force=True)
    assert result.state is EntryState.DONE
    assert result.status == 201
    assert not result.replayed
    assert len(service.ledger) == 1
    assert client.replay(force=True) == []
    # The same key again is answered from the server's store, not charged again.
    again = client.post(json={"amount": 25}, headers={"Idempotency-Key": caught.value.key})
    assert again.extensions["retrysafe"].replayed
    assert len(service.ledger) == 1


def test_a_call_that_ran_but_lost_its_answer_replays_the_stored_result(
    flavor: str, payments: Any, service: Payments, dlq: DeadLetterQueue
) -> None:
    service.mode = "slow"  # charges, then answers after 1.2 s: the client gave up at 0.2 s
    impatient = Client(
        flavor,
        payments[1],
        dlq,
        retry=RetryPolicy(attempts=1),
        timeout=httpx.Timeout(5.0, read=0.2),
    )
    with pytest.raises(RetriesExhausted) as caught:
        impatient.post(json={"amount": 40})
    assert isinstance(caught.value.last_error, httpx.ReadTimeout)
    entry = dlq.get(caught.value.parked or "")
    assert entry is not None
    assert entry.redacted == ("authorization",)
    service.mode = "ok"
    # The replay meets the first request still in flight (409, Retry-After: 1), waits, and then
    # gets the stored response: the charge happened exactly once.
    patient = Client(flavor, payments[1], dlq, retry=RetryPolicy(base=0.01, attempts=5))
    [result] = patient.replay(force=True)
    assert result.state is EntryState.DONE
    assert result.replayed
    assert patient.statuses == [409, 201]  # waited for the first, then got its stored answer
    assert len(service.ledger) == 1

"""Client test harness: one scripted network, driven through the sync or the async transport.

Every behaviour test takes the ``flavor`` fixture and runs twice, once through
:class:`IdempotentTransport` + ``httpx.Client`` and once through
:class:`AsyncIdempotentTransport` + ``httpx.AsyncClient`` (mirrored sync/async). Time
is a :class:`FakeTime`: sleeping moves it instead of waiting, and every sleep is recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import httpx

from retrysafe.client import AsyncIdempotentTransport, IdempotentTransport
from retrysafe.client.dlq import DeadLetterQueue, ReplayResult

LIVE_CREDENTIALS = "Bearer live-token"
LIVE_COOKIE = "sid=live-session"
Handler = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """Monotonic and wall clocks that move only when slept on or advanced (thread-safe)."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self._mono = 1000.0
        self._offset = wall - self._mono
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def wall(self) -> float:
        with self._lock:
            return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Script:
    """A MockTransport handler answering from a list; records every request it saw."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # A snapshot: the transport re-sends the same request object with a new attempt number.
        self.seen.append(
            httpx.Request(
                request.method,
                request.url,
                headers=list(request.headers.raw),
                content=request.content,
                extensions=dict(request.extensions),
            )
        )
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


class Harness:
    """A transport of the chosen flavor around a scripted network, plus a way to call it."""

    def __init__(self, flavor: str, handler: Callable[[httpx.Request], Any], **kw: Any) -> None:
        self.flavor = flavor
        self.time = kw.pop("time", None) or FakeTime()
        kw.setdefault("rng", random.Random(7))
        kw.setdefault("clock", self.time.monotonic)
        kw.setdefault("wall", self.time.wall)
        mock = httpx.MockTransport(handler)
        self.transport: IdempotentTransport | AsyncIdempotentTransport
        if flavor == "sync":
            self.transport = IdempotentTransport(mock, sleep=self.time.sleep, **kw)
        else:
            self.transport = AsyncIdempotentTransport(mock, sleep=self.time.asleep, **kw)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        if isinstance(self.transport, IdempotentTransport):
            with httpx.Client(transport=self.transport) as client:
                return client.request(method, url, **kw)

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport) as client:
                return await client.request(method, url, **kw)

        return asyncio.run(go())

    def replay(self, dlq: DeadLetterQueue, **kw: Any) -> list[ReplayResult]:
        """Replay ``dlq`` through a client of this flavor carrying live credentials."""
        creds = {"Authorization": LIVE_CREDENTIALS, "Cookie": LIVE_COOKIE}
        if isinstance(self.transport, IdempotentTransport):
            with httpx.Client(transport=self.transport, headers=creds) as client:
                return dlq.replay(client, **kw)

        async def go() -> list[ReplayResult]:
            async with httpx.AsyncClient(transport=self.transport, headers=creds) as client:
                return await dlq.areplay(client, **kw)

        return asyncio.run(go())

    def post(self, url: str = "http://api.test/charges", **kw: Any) -> httpx.Response:
        kw.setdefault("json", {"amount": 100})
        return self.request("POST", url, **kw)


def reply(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, content=body)


def problem(status: int, kind: str, **headers: str) -> httpx.Response:
    doc = {"type": f"urn:retrysafe:problem:{kind}", "title": "t", "status": status}
    body = json.dumps(doc).encode()
    return httpx.Response(
        status, headers={"content-type": "application/problem+json", **headers}, content=body
    )

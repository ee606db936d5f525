"""httpx transports that make every call safe to retry (SPEC 20-27).

``IdempotentTransport`` wraps another transport (httpx's own by default), so users keep their
``httpx.Client``::

    client = httpx.Client(transport=IdempotentTransport(retry=RetryPolicy(attempts=5)))

Per call it (1) gives POST/PATCH requests a key unless the caller set one — a UUIDv4, or, inside
a keyed operation (``retrysafe.current_key()``), a sub-key derived deterministically from it
(see :func:`retrysafe._context.next_derived_key`); (2) buffers the body so every attempt sends the
same bytes; (3) runs the shared retry flow of ``_flow.py``. The two classes below are only the
drivers of that flow: one with blocking I/O, one with ``await``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import httpx

from retrysafe._context import next_derived_key
from retrysafe._keys import new_key, parse_key
from retrysafe.client import _telemetry
from retrysafe.client._breaker import CircuitBreaker
from retrysafe.client._budget import RetryBudget
from retrysafe.client._flow import Buffer, Call, Flow, Park, Read, Reply, Send, Sleep, call_flow
from retrysafe.client._redirects import strip_cross_origin
from retrysafe.client._retry import RetryPolicy
from retrysafe.client.dlq import REDACTED_HEADERS, REPLAY_EXTENSION, DeadLetterQueue
from retrysafe.errors import InvalidKey

PARK_REASONS = frozenset({"exhausted", "circuit_open", "budget", "retry_after"})


class _Base:
    """Configuration and per-call preparation shared by both transports."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        breaker: CircuitBreaker | None,
        budget: RetryBudget | bool | None,
        dlq: DeadLetterQueue | None,
        park_on: Iterable[str],
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random | None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.breaker = breaker
        self.budget = RetryBudget(clock=clock) if budget is True else (budget or None)
        self.dlq = dlq
        self.park_on = frozenset(park_on) if dlq is not None else frozenset()
        unknown = self.park_on - PARK_REASONS
        if unknown:
            raise ValueError(f"unknown park_on reasons {sorted(unknown)}; known: {PARK_REASONS}")
        self.clock, self.wall = clock, wall
        self.rng = rng or random.Random()
        # Never carried by a redirect to another origin (_redirects.py); Cookie is httpx's own.
        redacted = REDACTED_HEADERS | (dlq.redact if dlq is not None else frozenset())
        self.cross_origin_strip = redacted - {"cookie"}

    def _call(self, request: httpx.Request, telemetry: _telemetry.CallTelemetry) -> Call:
        policy = self.retry
        hop_key = strip_cross_origin(request, policy.key_header, self.cross_origin_strip)
        if hop_key is not None and policy.wants_key(request.method):
            request.headers[policy.key_header] = hop_key
        key = _existing_key(request, policy.key_header)
        if key is None and policy.wants_key(request.method):
            key = next_derived_key() or new_key()
            request.headers[policy.key_header] = key
        replaying = REPLAY_EXTENSION in request.extensions
        return Call(
            request=request,
            key=key,
            policy=policy,
            breaker=self.breaker,
            budget=self.budget,
            park_on=frozenset() if replaying else self.park_on,
            monotonic=self.clock,
            wall=self.wall,
            rng=self.rng,
            observe=telemetry.observe,
        )


def _in_memory(response: httpx.Response, raw: bytes) -> httpx.Response:
    """``response`` again, its body (still content-encoded) served from memory.

    A fresh, unread response rather than ``response.read()``: the caller's client decodes the
    bytes as it would have, and a ``client.stream()`` caller can still iterate them, raw or
    decoded, since nothing has consumed this stream.
    """
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        extensions=response.extensions,
    )


def _existing_key(request: httpx.Request, header: str) -> str | None:
    values = request.headers.get_list(header)
    if not values:
        return None
    try:
        return parse_key(values)
    except InvalidKey:
        return values[0]  # not ours to judge: the server answers 400, which is not retried


class IdempotentTransport(_Base, httpx.BaseTransport):
    """Sync transport: keys, retries with backoff, budget, breaker and DLQ around ``inner``."""

    def __init__(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        budget: RetryBudget | bool | None = True,
        dlq: DeadLetterQueue | None = None,
        park_on: Iterable[str] = PARK_REASONS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            retry=retry,
            breaker=breaker,
            budget=budget,
            dlq=dlq,
            park_on=park_on,
            clock=clock,
            wall=wall,
            rng=rng,
        )
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # every attempt (and a later replay) must send these very bytes
        telemetry = _telemetry.CallTelemetry(request)
        call = self._call(request, telemetry)
        flow: Flow = call_flow(call)
        reply: Reply = None
        try:
            while True:
                command = flow.send(reply)
                reply = None
                match command:
                    case Send(req, number, key):
                        with telemetry.attempt(req, number, key) as span:
                            try:
                                reply = self.inner.handle_request(req)
                            except httpx.TransportError as exc:
                                reply = exc
                            _telemetry.attempt_result(span, reply)
                    case Buffer(response):
                        try:
                            reply = _in_memory(response, b"".join(response.iter_raw()))
                        except httpx.TransportError as exc:
                            response.close()
                            reply = exc
                    case Read(response):
                        try:
                            response.read()
                        except httpx.TransportError:
                            response.close()  # an unreadable body of an answer we drop anyway
                    case Sleep(seconds):
                        self.sleep(seconds)
                    case Park():
                        reply = self._park(call, command)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()
            telemetry.close()

    def _park(self, call: Call, park: Park) -> str:
        assert self.dlq is not None
        assert call.key is not None
        return self.dlq.park(
            call.request,
            key=call.key,
            reason=park.reason,
            attempts=park.attempts,
            last_error=park.last_error,
            not_before=park.not_before,
        )

    def close(self) -> None:
        self.inner.close()


class AsyncIdempotentTransport(_Base, httpx.AsyncBaseTransport):
    """Async twin of :class:`IdempotentTransport`: the same flow, driven with ``await``."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        budget: RetryBudget | bool | None = True,
        dlq: DeadLetterQueue | None = None,
        park_on: Iterable[str] = PARK_REASONS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            retry=retry,
            breaker=breaker,
            budget=budget,
            dlq=dlq,
            park_on=park_on,
            clock=clock,
            wall=wall,
            rng=rng,
        )
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self.sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        telemetry = _telemetry.CallTelemetry(request)
        call = self._call(request, telemetry)
        flow: Flow = call_flow(call)
        reply: Reply = None
        try:
            while True:
                command = flow.send(reply)
                reply = None
                match command:
                    case Send(req, number, key):
                        with telemetry.attempt(req, number, key) as span:
                            try:
                                reply = await self.inner.handle_async_request(req)
                            except httpx.TransportError as exc:
                                reply = exc
                            _telemetry.attempt_result(span, reply)
                    case Buffer(response):
                        try:
                            raw = b"".join([chunk async for chunk in response.aiter_raw()])
                        except httpx.TransportError as exc:
                            await response.aclose()
                            reply = exc
                        else:
                            reply = _in_memory(response, raw)
                    case Read(response):
                        try:
                            await response.aread()
                        except httpx.TransportError:
                            await response.aclose()
                    case Sleep(seconds):
                        await self.sleep(seconds)
                    case Park():
                        reply = await self._apark(call, command)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()
            telemetry.close()

    async def _apark(self, call: Call, park: Park) -> str:
        assert self.dlq is not None
        assert call.key is not None
        return await self.dlq.apark(
            call.request,
            key=call.key,
            reason=park.reason,
            attempts=park.attempts,
            last_error=park.last_error,
            not_before=park.not_before,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

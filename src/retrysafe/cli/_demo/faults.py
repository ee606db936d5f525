"""An ASGI fault layer for the agent demo: the unreliable network between agent and API.

It wraps the *outside* of the payments app (and of retrysafe's middleware, when there is one),
so everything it does happens where a real network would do it:

- **lost responses** — the request reaches the API, the handler runs and books the charge,
  the middleware stores the answer; then the answer is never sent. The client's read times
  out and it cannot know whether the charge happened.
- **503 bursts** — a request may start a burst during which every request is answered 503
  without reaching the API (an overloaded load balancer).
- **latency** — every request waits a random few milliseconds; a few hit a slow card
  network inside the handler, slower than the client's read timeout, so the client retries
  while the first attempt is still running (SPEC 10: a duplicate in flight).

Every decision is drawn from one seeded RNG. It also counts what crossed it — attempts,
retries (the client's ``Idempotency-Attempt`` header), replays and conflicts — which is how
the demo reports HTTP traffic even for an agent process that was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from retrysafe.cli._demo.payments import DELAY_SCOPE_KEY
from retrysafe.cli._demo.plan import Faults
from retrysafe.http import ASGIApp, Message, Receive, Scope, Send

BUSY_BODY = (
    b'{"type":"about:blank","title":"Service Unavailable","status":503,'
    b'"detail":"injected by the demo\'s fault layer"}'
)
_LOST_WAIT = 30.0  # a client that never gives up on a lost answer is cut off after this


@dataclass
class FaultCounts:
    """What crossed the fault layer (both directions)."""

    attempts: int = 0  # requests that arrived
    retries: int = 0  # of which carried Idempotency-Attempt >= 2
    lost: int = 0  # answers produced, then dropped
    unavailable: int = 0  # injected 503s
    bursts: int = 0
    slow: int = 0
    replays: int = 0  # answers with Idempotent-Replayed: true (retrysafe's store served them)
    conflicts: int = 0  # 409 (in flight) and 422 (key mismatch) problems from retrysafe
    statuses: Counter[int] = field(default_factory=Counter)


class FaultLayer:
    """Pure ASGI wrapper that injects :class:`Faults` (``plan.py``) in front of ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        faults: Faults,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.faults = faults
        self.rng = random.Random(seed)
        self.clock = clock
        self.counts = FaultCounts()
        self._burst_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counts, f = self.counts, self.faults
        counts.attempts += 1
        headers = dict(scope["headers"])
        if int(headers.get(b"idempotency-attempt", b"1") or 1) > 1:
            counts.retries += 1
        # Draw every decision up front: the same number of draws per request keeps a seed's
        # fault sequence stable whatever each request ends up doing.
        latency, burst, lose, slow = (self.rng.random() for _ in range(4))
        if f.latency_ms:
            await asyncio.sleep(latency * f.latency_ms / 1000)
        now = self.clock()
        if now >= self._burst_until and burst < f.burst_rate:
            self._burst_until = now + f.burst_seconds
            counts.bursts += 1
        if now < self._burst_until:
            counts.unavailable += 1
            counts.statuses[503] += 1
            await _busy(send)
            return
        if slow < f.slow_rate:
            counts.slow += 1
            scope = {**scope, DELAY_SCOPE_KEY: f.slow_seconds}
        if lose < f.loss_rate:
            await self._lose(scope, receive, send)
        else:
            await self._forward(scope, receive, send)

    def _observe(self, message: Message) -> None:
        if message["type"] != "http.response.start":
            return
        status = int(message["status"])
        self.counts.statuses[status] += 1
        headers = dict(message.get("headers") or ())
        if headers.get(b"idempotent-replayed") == b"true":
            self.counts.replays += 1
        problem = headers.get(b"content-type", b"").startswith(b"application/problem+json")
        if status in (409, 422) and problem:
            self.counts.conflicts += 1

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def observed(message: Message) -> None:
            self._observe(message)
            await send(message)

        await self.app(scope, receive, observed)

    async def _lose(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the app answer in full (so retrysafe completes its record), then never send it.

        The client waits for an answer that does not come until its read timeout, gives up
        and closes the connection — a lost response as the client experiences it. (Nothing is
        sent at all: a response cut off after its headers would surface in httpx only when
        the body is read, after the transport has returned.)
        """
        held: list[Message] = []

        async def hold(message: Message) -> None:
            self._observe(message)
            held.append(message)

        await self.app(scope, receive, hold)
        self.counts.lost += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LOST_WAIT):
                while (await receive())["type"] != "http.disconnect":
                    pass


async def _busy(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(BUSY_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BUSY_BODY})


__all__ = ["FaultCounts", "FaultLayer"]

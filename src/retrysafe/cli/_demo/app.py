"""The demo's example payments API: a Starlette app with retrysafe in front of it.

Two endpoints, each behind its own :class:`~retrysafe.http.ASGIIdempotencyMiddleware`:

- ``POST /charges`` — charges a card. A key is required (SPEC 11) and records replay for 24 h.
- ``POST /holds``   — places a short card hold. Its policy keeps records for ``hold_ttl``
  seconds only, so the demo can show a key expiring (SPEC 14) without waiting a day.

The app keeps a :class:`Ledger` of every charge it made and every time a handler ran, which is
how the demo proves from the outside what really happened. Request bodies drive the demo's
failure injection: ``delay_ms`` makes the handler slow (so a client times out and its response
is "lost"), ``fail_first`` makes the first N attempts for a customer fail with a 502 from a
flaky card network.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response

from retrysafe._policy import Policy
from retrysafe.http import STATE_KEY, ASGIIdempotencyMiddleware
from retrysafe.stores import AsyncStore


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    customer: str
    amount: int
    key: str | None


@dataclass
class Ledger:
    """What the payments API really did, kept by the app itself (not by retrysafe)."""

    charges: list[Charge] = field(default_factory=list)
    holds: list[Charge] = field(default_factory=list)
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, customer)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def charges_of(self, customer: str) -> list[Charge]:
        return [c for c in self.charges if c.customer == customer]

    def holds_of(self, customer: str) -> list[Charge]:
        return [h for h in self.holds if h.customer == customer]

    def charged_twice(self) -> list[str]:
        """Customers with more than one charge: each demo customer pays exactly once."""
        counts = Counter(c.customer for c in self.charges)
        return sorted(customer for customer, n in counts.items() if n > 1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"


def _problem(status: int, title: str, detail: str) -> Response:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


async def _order(request: Request) -> tuple[str, int, dict[str, Any]] | Response:
    """The (customer, amount, body) of a request, or the 400 the app answers for bad input."""
    try:
        body = await request.json()
        customer, amount = body["customer"], body["amount"]
    except (ValueError, KeyError, TypeError):
        return _problem(400, "Bad request", 'send a JSON object {"customer": str, "amount": int}')
    if not isinstance(customer, str) or not isinstance(amount, int) or amount <= 0:
        return _problem(400, "Bad request", "customer must be a string, amount a positive int")
    return customer, amount, body


def build_app(
    store: AsyncStore, ledger: Ledger, *, hold_ttl: float = 0.5, wait: float = 5.0
) -> Starlette:
    """The payments API on ``store``; ``ledger`` records what it did."""

    async def charge(request: Request) -> Response:
        order = await _order(request)
        if isinstance(order, Response):
            return order
        customer, amount, body = order
        ledger.runs["charges", customer] += 1
        if ledger.runs["charges", customer] <= int(body.get("fail_first", 0)):
            # The card network failed before anything was charged: a 5xx, so retrysafe
            # releases the key and the client's retry runs the handler again (SPEC 12).
            return _problem(502, "Card network unavailable", "try again with the same key")
        if delay := body.get("delay_ms"):
            await asyncio.sleep(float(delay) / 1000)
        made = Charge(ledger.new_id("ch"), customer, amount, request.state.idempotency_key)
        ledger.charges.append(made)
        return JSONResponse(
            {"id": made.id, "customer": customer, "amount": amount, "key": made.key},
            status_code=201,
            headers={"Location": f"/charges/{made.id}"},
        )

    async def hold(request: Request) -> Response:
        order = await _order(request)
        if isinstance(order, Response):
            return order
        customer, amount, _ = order
        ledger.runs["holds", customer] += 1
        made = Charge(ledger.new_id("hold"), customer, amount, request.state.idempotency_key)
        ledger.holds.append(made)
        return JSONResponse({"id": made.id, "customer": customer, "amount": amount}, 201)

    charges_policy = Policy(required=True, wait=timedelta(seconds=wait))
    holds_policy = Policy(ttl=timedelta(seconds=hold_ttl), wait=timedelta(seconds=wait))
    routes = [
        # A Route whose endpoint is an ASGI app (not a function) is called as one, so each
        # endpoint gets its own middleware and its own policy.
        Route(
            "/charges",
            ASGIIdempotencyMiddleware(request_response(charge), store=store, policy=charges_policy),
            methods=["POST"],
        ),
        Route(
            "/holds",
            ASGIIdempotencyMiddleware(request_response(hold), store=store, policy=holds_policy),
            methods=["POST"],
        ),
    ]
    return Starlette(routes=routes)


__all__ = ["STATE_KEY", "Charge", "Ledger", "build_app"]

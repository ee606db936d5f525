"""The agent demo's payments API: purchases and refunds, with its own ledger as the ground truth.

``POST /purchases`` ``{"order", "customer", "sku", "cents"}`` charges a card (201 with the
charge id); ``POST /refunds`` ``{"order", "charge", "cents"}`` refunds a charge (404 problem
for an unknown charge). With ``idempotent=True`` the whole app sits behind one
:class:`~retrysafe.http.ASGIIdempotencyMiddleware` (keys required, SPEC 11); without, it is the
same app unprotected — the demo's "idempotency switched off" column.

The :class:`PaymentsLedger` is kept by the app, not by retrysafe: it is how the demo proves
from the outside how often each logical operation really took money. ``on_charge`` lets the
orchestrator act at an exact moment — it kills the agent worker from inside a purchase, after
the charge is booked and before the answer leaves (the crash the demo resumes from).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe._policy import Policy
from retrysafe.http import ASGIApp, ASGIIdempotencyMiddleware
from retrysafe.stores import AsyncStore

DELAY_SCOPE_KEY = "retrysafe.demo.delay"  # set by the fault layer: a slow card network


@dataclass
class PaymentsLedger:
    """Every charge and refund the API made, keyed by the agent's order id."""

    charges: list[tuple[str, str, int]] = field(default_factory=list)  # (charge, order, cents)
    refunds: list[tuple[str, str, int]] = field(default_factory=list)  # (refund, order, cents)
    on_charge: Callable[[int, str], None] | None = None  # (charges so far, order)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):05d}"

    def charges_per_order(self) -> Counter[str]:
        return Counter(order for _, order, _ in self.charges)

    def refunds_per_order(self) -> Counter[str]:
        return Counter(order for _, order, _ in self.refunds)

    def duplicates(self) -> int:
        """Charges and refunds beyond the first of each order: money moved twice."""
        per = (*self.charges_per_order().values(), *self.refunds_per_order().values())
        return sum(n - 1 for n in per if n > 1)

    def overcharged_cents(self) -> int:
        """Net money taken beyond what the plan meant: extra charges minus extra refunds."""
        extra = 0
        for rows, sign in ((self.charges, 1), (self.refunds, -1)):
            seen: set[str] = set()
            for _, order, cents in rows:
                if order in seen:
                    extra += sign * cents
                seen.add(order)
        return extra


def _problem(status: int, title: str, detail: str) -> Response:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


async def _fields(request: Request, names: dict[str, type]) -> dict[str, Any] | Response:
    try:
        body = await request.json()
        values = {name: body[name] for name in names}
    except ClientDisconnect:  # the client gave up before its body arrived: nothing to do
        return Response(status_code=499)
    except (ValueError, KeyError, TypeError):
        return _problem(400, "Bad request", f"send a JSON object with {', '.join(names)}")
    for name, kind in names.items():
        if not isinstance(values[name], kind) or isinstance(values[name], bool):
            return _problem(400, "Bad request", f"{name} must be a {kind.__name__}")
    return values


def build_payments_app(
    ledger: PaymentsLedger,
    *,
    store: AsyncStore | None,
    wait: float = 0.2,
) -> ASGIApp:
    """The payments API; behind retrysafe's middleware on ``store``, or bare when it is None.

    ``wait`` bounds how long a duplicate waits for an in-flight first attempt before it gets
    a 409 (SPEC 10); short here so the demo's slow-network faults show up as conflicts.
    """

    async def purchase(request: Request) -> Response:
        order = await _fields(request, {"order": str, "customer": str, "sku": str, "cents": int})
        if isinstance(order, Response):
            return order
        if delay := request.scope.get(DELAY_SCOPE_KEY):
            await asyncio.sleep(delay)
        charge = ledger.new_id("ch")
        ledger.charges.append((charge, order["order"], order["cents"]))
        if ledger.on_charge is not None:
            ledger.on_charge(len(ledger.charges), order["order"])
        return JSONResponse({"charge": charge, **order}, status_code=201)

    async def refund(request: Request) -> Response:
        asked = await _fields(request, {"order": str, "charge": str, "cents": int})
        if isinstance(asked, Response):
            return asked
        if not any(c == asked["charge"] for c, _, _ in ledger.charges):
            return _problem(404, "No such charge", f"{asked['charge']} was never made")
        if delay := request.scope.get(DELAY_SCOPE_KEY):
            await asyncio.sleep(delay)
        made = ledger.new_id("re")
        ledger.refunds.append((made, asked["order"], asked["cents"]))
        return JSONResponse({"refund": made, **asked}, status_code=201)

    app: ASGIApp = Starlette(
        routes=[
            Route("/purchases", purchase, methods=["POST"]),
            Route("/refunds", refund, methods=["POST"]),
        ]
    )
    if store is None:
        return app
    policy = Policy(required=True, wait=timedelta(seconds=wait))
    return ASGIIdempotencyMiddleware(app, store=store, policy=policy)


__all__ = ["DELAY_SCOPE_KEY", "PaymentsLedger", "build_payments_app"]

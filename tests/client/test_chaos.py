"""Many logical charges through a fault-injecting proxy to a real retrysafe server.

The ledger must hold exactly one charge per logical call once the DLQ has been drained: zero
duplicates (same key charged twice) and zero lost (a call that reported success but was not
charged, or a parked call never charged after replay). Calls that ended parked may already have
been charged — a ``drop`` fault lets the server do the work and hides the answer — and then the
replay must come back as a *replay*, not a second charge.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.client_servers import FaultProxy, serve_app
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.client import (
    AsyncIdempotentTransport,
    CallFailed,
    CircuitBreaker,
    IdempotentTransport,
    RetryPolicy,
)
from retrysafe.client.dlq import DeadLetterQueue, EntryState
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

CALLS = 1000
CONCURRENCY = 16
RATES = {"reset": 0.08, "drop": 0.08, "busy": 0.08, "slow": 0.04}


class Ledger:
    def __init__(self) -> None:
        self.charges: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def charge(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.charges[body["call"]] += 1
        return JSONResponse({"charged": body["call"]}, status_code=201)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Ledger, FaultProxy, DeadLetterQueue]]:
    ledger = Ledger()
    app = Starlette(routes=[Route("/charges", ledger.charge, methods=["POST"])])
    with serve_app(
        ASGIIdempotencyMiddleware(app, store=MemoryStore(), policy=Policy(scope=shared_scope))
    ) as url:
        proxy = FaultProxy(int(url.rsplit(":", 1)[1]), RATES, seed=4)
        dlq = DeadLetterQueue(tmp_path / "dlq.db", rate=10_000.0)
        try:
            yield ledger, proxy, dlq
        finally:
            dlq.close()
            proxy.close()


@pytest.mark.slow
async def test_exactly_once_under_faults(world: tuple[Ledger, FaultProxy, DeadLetterQueue]) -> None:
    ledger, proxy, dlq = world
    transport = AsyncIdempotentTransport(
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
        retry=RetryPolicy(attempts=4, base=0.002, cap=0.02, deadline=20.0),
        breaker=CircuitBreaker(),
        dlq=dlq,
    )
    succeeded: set[str] = set()
    parked: dict[str, str] = {}  # call -> DLQ entry
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(CALLS):
        queue.put_nowait(i)
    async with httpx.AsyncClient(transport=transport, base_url=proxy.url, timeout=10.0) as client:

        async def worker() -> None:
            while not queue.empty():
                call = f"call-{queue.get_nowait()}"
                try:
                    response = await client.post("/charges", json={"call": call})
                except CallFailed as exc:
                    parked[call] = exc.parked or f"not parked: {exc!r}"
                    continue
                assert response.status_code == 201, response.text
                assert response.json() == {"charged": call}
                succeeded.add(call)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        assert len(succeeded) + len(parked) == CALLS
        assert all(entry in dlq_ids(dlq) for entry in parked.values())
        # Every success was charged exactly once: zero duplicates, zero lost.
        assert all(ledger.charges[c] == 1 for c in succeeded)
        # Parked calls were charged at most once (a dropped answer hides a done charge).
        assert all(ledger.charges[c] <= 1 for c in parked)
        charged_before = sum(1 for c in parked if ledger.charges[c] == 1)

        # Drain the DLQ, faults still on, until nothing is parked.
        rounds = 0
        while dlq.depth() and rounds < 20:
            rounds += 1
            await dlq.areplay(client, force=True)
    assert dlq.depth() == 0
    entries = {e.id: e for e in dlq.entries()}
    assert all(entries[e].state is EntryState.DONE for e in parked.values())
    # After replay: every logical call charged exactly once, and nothing else was charged.
    assert all(ledger.charges[f"call-{i}"] == 1 for i in range(CALLS))
    assert sum(ledger.charges.values()) == CALLS
    assert proxy.counts["drop"] > 0
    assert proxy.counts["reset"] > 0
    reasons = Counter(entries[e].reason for e in parked.values())
    print(
        f"\n{CALLS} calls: {len(succeeded)} ok, {len(parked)} parked {dict(reasons)} "
        f"({charged_before} already charged), {rounds} replay round(s); faults {proxy.counts}"
    )


def dlq_ids(dlq: DeadLetterQueue) -> set[str]:
    return {e.id for e in dlq.entries()}


@pytest.mark.slow
def test_exactly_once_under_faults_with_threads(
    world: tuple[Ledger, FaultProxy, DeadLetterQueue],
) -> None:
    ledger, proxy, dlq = world
    calls = 400
    transport = IdempotentTransport(
        httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
        retry=RetryPolicy(attempts=4, base=0.002, cap=0.02, deadline=20.0),
        dlq=dlq,
    )
    outcomes: dict[str, str] = {}
    lock = threading.Lock()
    numbers = iter(range(calls))

    with httpx.Client(transport=transport, base_url=proxy.url, timeout=10.0) as client:

        def worker() -> None:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                call = f"call-{n}"
                try:
                    response = client.post("/charges", json={"call": call})
                    outcome = "ok" if response.status_code == 201 else str(response.status_code)
                except CallFailed as exc:
                    outcome = exc.parked or "lost"
                with lock:
                    outcomes[call] = outcome

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(outcomes) == calls
        assert all(ledger.charges[c] == 1 for c, o in outcomes.items() if o == "ok")
        assert all(o == "ok" or o in dlq_ids(dlq) for o in outcomes.values())
        for _ in range(20):
            if not dlq.depth():
                break
            dlq.replay(client, force=True)
    assert dlq.depth() == 0
    assert all(ledger.charges[f"call-{i}"] == 1 for i in range(calls))
    assert sum(ledger.charges.values()) == calls

"""The demo's agent: one OS process that works through the plan with two tools.

Run as ``python -m retrysafe.cli._demo.agent SETTINGS_JSON`` by the orchestrator
(:mod:`retrysafe.cli._demo.agentdemo`), which may SIGKILL it at any moment and start another one
with the same settings — the same durable ``agent_run`` id — to resume.

What it does, like an agent framework would:

- ``purchase`` and ``refund`` are tools that call the payments API through
  :class:`~retrysafe.client.AsyncIdempotentTransport` (retries with backoff, retry budget,
  circuit breaker, dead-letter queue). With idempotency on they are ``@idempotent_tool``
  tools on a SQLite store: each tool call's key comes from the run id and its arguments, and
  the HTTP request it makes carries a key derived from that (``retrysafe._context``), so a
  re-run of the same call — a retried turn, a resume after a crash — sends the same key.
- Orders are worked on by a few concurrent lanes. An order is one "turn": its purchase, then
  its refund when planned. A turn that fails (a call parked in the DLQ, a circuit open) is
  deferred and re-run whole, later: agent frameworks retry turns, not single HTTP calls.
- A checkpoint of finished orders is written every ``checkpoint_every`` orders (as graph
  frameworks checkpoint between steps). A resumed process skips checkpointed orders and
  redoes the rest — including those that finished after the last checkpoint, and the ones in
  flight when the process died.
- At the end it drains the DLQ, re-runs deferred turns until none is left, and reports.

It talks to the orchestrator in JSON lines on stdout (``{"event": ...}``), one after every
order, so the orchestrator knows what a killed process had done.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from retrysafe.cli._demo.plan import AgentSettings, Order, make_plan
from retrysafe.client import (
    AsyncIdempotentTransport,
    CallFailed,
    CircuitBreaker,
    CircuitOpen,
    RetryPolicy,
    State,
    Transition,
)
from retrysafe.client.dlq import DeadLetterQueue, EntryState
from retrysafe.errors import IdempotencyConflict
from retrysafe.stores.url import open_store
from retrysafe.testing import RecordingStore
from retrysafe.tools import agent_run, idempotent_tool

Tool = Callable[..., Awaitable[dict[str, Any]]]
MAX_ROUNDS = 30  # deferred-turn rounds at the end; each waits for the faults to ease
ROUND_PAUSE = 0.2
# The agent's API key: the payments API files its keys under it (the default Policy's scope).
# The dead-letter queue never writes it down; a replay takes it from the live client.
AGENT_CREDENTIALS = {"Authorization": "Bearer demo-agent-key"}
CIRCUIT_WAITS = 20  # a turn waits out an open circuit this often, then is deferred


class ToolFailed(Exception):
    """The API answered, but not with what the tool needs (a terminal 4xx)."""


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the orchestrator; flushed, since this process may be killed any time."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Checkpoint:
    """The set of finished orders, saved atomically (write, then rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            self.done = set(json.loads(path.read_text(encoding="utf-8")))

    def save(self, done: Iterable[str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(done)), encoding="utf-8")
        os.replace(tmp, self.path)


def _created(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 201:
        raise ToolFailed(f"HTTP {response.status_code}: {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def make_tools(
    client: httpx.AsyncClient, store: RecordingStore | None, lease: float
) -> tuple[Tool, Tool]:
    """The agent's two tools; ``@idempotent_tool`` on ``store`` unless it is None."""

    async def purchase(order: str, customer: str, sku: str, cents: int) -> dict[str, Any]:
        payload = {"order": order, "customer": customer, "sku": sku, "cents": cents}
        return _created(await client.post("/purchases", json=payload))

    async def refund(order: str, charge: str, cents: int) -> dict[str, Any]:
        payload = {"order": order, "charge": charge, "cents": cents}
        return _created(await client.post("/refunds", json=payload))

    if store is None:
        return purchase, refund
    tool = idempotent_tool(store, lease=lease)
    return tool(purchase), tool(refund)


class Agent:
    """One process's share of the run: its counters, its tools, its lanes."""

    def __init__(self, settings: AgentSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        state = Path(settings.state_dir)
        self.checkpoint = Checkpoint(state / "checkpoint.json")
        self.done: set[str] = set(self.checkpoint.done)
        self.store: RecordingStore | None = None
        if settings.idempotent:
            self.store = RecordingStore(open_store(f"sqlite:///{state / 'tools.db'}"))
        self.purchase, self.refund = make_tools(client, self.store, settings.tool_lease)
        self.trips = 0
        self.parked = 0
        self.deferrals = 0
        self.dlq_results: Counter[str] = Counter()

    def on_transition(self, transition: Transition) -> None:
        if transition.new is State.OPEN:
            self.trips += 1

    def stats(self) -> dict[str, Any]:
        return {
            "tool_claims": dict(self.store.tally.claims) if self.store else {},
            "trips": self.trips,
            "parked": self.parked,
            "deferrals": self.deferrals,
            "dlq": dict(self.dlq_results),
        }

    async def turn(self, order: Order) -> bool:
        """One order: purchase, then refund if planned. False: deferred (try again later).

        An open circuit is waited out and the turn re-run at once (nothing was sent: the
        breaker refuses before sending); a call that exhausted its retries or the retry
        budget is parked in the DLQ by the transport, and the turn is deferred.
        """
        for _ in range(CIRCUIT_WAITS):
            try:
                charged = await self.purchase(order.order, order.customer, order.sku, order.cents)
                if order.refund:
                    await self.refund(order.order, charged["charge"], order.cents)
            except CircuitOpen as exc:
                await asyncio.sleep(min(max(exc.not_before - time.time(), 0.01), 2.0))
                continue
            except CallFailed as exc:  # exhausted, budget: parked (it had a key)
                self.parked += exc.parked is not None
            except (ToolFailed, IdempotencyConflict):  # e.g. the first call still in flight
                pass
            else:
                return True
            break
        self.deferrals += 1
        return False

    async def drain(self, dlq: DeadLetterQueue, client: httpx.AsyncClient) -> None:
        """Replay every parked call once, a few at a time (one ``areplay`` per lane)."""
        entries = await asyncio.to_thread(dlq.entries, EntryState.PARKED, limit=100_000)
        parked = [e.id for e in entries]
        lanes = self.settings.lanes
        batches = [parked[i::lanes] for i in range(lanes) if parked[i::lanes]]
        replays = [dlq.areplay(client, ids, force=True) for ids in batches]
        for results in await asyncio.gather(*replays):
            for result in results:
                self.dlq_results[str(result.state)] += 1
                self.dlq_results["replayed"] += result.replayed

    async def work(self, orders: list[Order]) -> list[Order]:
        """Run ``orders`` in concurrent lanes; returns the deferred ones."""
        queue: asyncio.Queue[Order] = asyncio.Queue()
        for order in orders:
            queue.put_nowait(order)
        deferred: list[Order] = []

        async def lane() -> None:
            while not queue.empty():
                order = queue.get_nowait()
                if not await self.turn(order):
                    deferred.append(order)
                    continue
                self.done.add(order.order)
                if len(self.done) % self.settings.checkpoint_every == 0:
                    self.checkpoint.save(self.done)
                emit("order", order=order.order, ops=order.operations, stats=self.stats())

        await asyncio.gather(*(lane() for _ in range(self.settings.lanes)))
        return deferred


async def run(settings: AgentSettings) -> None:
    """Work through the plan under ``agent_run(settings.run_id)``; resume from the checkpoint."""
    plan = make_plan(settings.operations, settings.seed)
    state = Path(settings.state_dir)
    dlq = DeadLetterQueue(state / "dlq.db", rate=1000.0)
    breaker = CircuitBreaker(
        failure_rate=0.5, minimum_calls=10, window=2.0, open_for=0.3, max_open_for=2.0, probes=2
    )
    transport = AsyncIdempotentTransport(
        retry=RetryPolicy(attempts=4, base=0.02, cap=0.25, deadline=5.0),
        breaker=breaker,
        dlq=dlq,
        park_on=("exhausted", "budget", "retry_after"),  # an open circuit is waited out
        rng=random.Random(settings.seed),
    )
    timeout = httpx.Timeout(5.0, read=settings.read_timeout)
    async with (
        httpx.AsyncClient(
            transport=transport, base_url=settings.url, headers=AGENT_CREDENTIALS, timeout=timeout
        ) as client,
        agent_run(settings.run_id),
    ):
        agent = Agent(settings, client)
        breaker.add_listener(agent.on_transition)
        todo = [o for o in plan if o.order not in agent.done]
        resumed_ops = sum(o.operations for o in plan if o.order in agent.done)
        emit("start", pid=os.getpid(), resumed_orders=len(agent.done), resumed_ops=resumed_ops)
        deferred = await agent.work(todo)
        for _ in range(MAX_ROUNDS):
            depth = await asyncio.to_thread(dlq.depth)
            if not deferred and not depth:
                break
            await asyncio.sleep(ROUND_PAUSE)  # let a 503 burst or an open circuit pass
            if depth:
                emit("phase", text=f"DLQ: replaying {depth} parked call(s)")
                await agent.drain(dlq, client)
            if deferred:
                emit("phase", text=f"re-running {len(deferred)} deferred turn(s)")
                deferred = await agent.work(deferred)
        agent.checkpoint.save(agent.done)
        emit("done", unfinished=len(deferred), dlq_depth=dlq.depth(), stats=agent.stats())
        if agent.store is not None:
            await agent.store.aclose()
    dlq.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m retrysafe.cli._demo.agent SETTINGS_JSON")
    asyncio.run(run(AgentSettings.from_json(args[0])))


if __name__ == "__main__":
    main()

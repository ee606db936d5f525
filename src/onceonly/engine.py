"""The claim loop, written once as a generator and driven by a sync and an async driver.

The generator yields store operations and receives their results (the httpx auth-flow
pattern, STYLE 5), so the loop "claim, decide, maybe wait, claim again" exists once. The
drivers are the only place that touch a store. Heartbeats are the one sync/async twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from onceonly.decide import Decision, Wait, decide
from onceonly.errors import StoreError
from onceonly.policy import Policy
from onceonly.records import ClaimResult
from onceonly.stores.base import AsyncStore, Store

log = logging.getLogger("onceonly")


@dataclass(frozen=True, slots=True)
class ClaimOp:
    id: str
    fingerprint: str
    lease: float


@dataclass(frozen=True, slots=True)
class WatchOp:
    id: str
    timeout: float


Op = ClaimOp | WatchOp
Flow = Generator[Op, ClaimResult | None, Decision]
# Told how long each store operation took ("claim" or "watch", seconds): telemetry's hook.
StoreTimer = Callable[[str, float], None]


def claim_flow(id: str, fingerprint: str, policy: Policy) -> Flow:
    """Claim; while the first attempt is in flight, watch and claim again (SPEC 7-10)."""
    started = time.monotonic()
    while True:
        result = yield ClaimOp(id, fingerprint, policy.lease_s)
        assert result is not None
        decision = decide(result, fingerprint, time.monotonic() - started, policy)
        if not isinstance(decision, Wait):
            return decision
        yield WatchOp(id, decision.timeout)


def run_flow(flow: Flow, store: Store, timer: StoreTimer | None = None) -> Decision:
    """Drive ``flow`` against a sync store, timing each operation for ``timer``."""
    op = next(flow)
    while True:
        started = time.perf_counter()
        match op:
            case ClaimOp(id, fingerprint, lease):
                answer: ClaimResult | None = store.claim(id, fingerprint, lease)
                name = "claim"
            case WatchOp(id, timeout):
                store.watch(id, timeout)
                answer, name = None, "watch"
        if timer is not None:
            timer(name, time.perf_counter() - started)
        try:
            op = flow.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


async def arun_flow(flow: Flow, store: AsyncStore, timer: StoreTimer | None = None) -> Decision:
    """Drive ``flow`` against an async store, timing each operation for ``timer``."""
    op = next(flow)
    while True:
        started = time.perf_counter()
        match op:
            case ClaimOp(id, fingerprint, lease):
                answer: ClaimResult | None = await store.aclaim(id, fingerprint, lease)
                name = "claim"
            case WatchOp(id, timeout):
                await store.awatch(id, timeout)
                answer, name = None, "watch"
        if timer is not None:
            timer(name, time.perf_counter() - started)
        try:
            op = flow.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def _lost(id: str) -> None:
    log.warning(
        "idempotency claim %s was taken over while its handler ran (lease lapsed); "
        "its result will not be stored",
        id[:12],
    )


class _BeatScheduler:
    """One daemon thread renews every sync claim whose heartbeat is due (a heap of due times).

    A thread per request would cost more than the request; most handlers finish long before
    their first heartbeat, so registering and cancelling must be cheap.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Heartbeat]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def schedule(self, beat: Heartbeat, due: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, beat))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="onceonly-heartbeat", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, beat = heapq.heappop(self._heap)
            beat.beat()


_scheduler = _BeatScheduler()

# A heartbeat skips a renewal while ``idle()`` is true: an atomic handler's open transaction
# holds the record itself (SQLite's write lock), so nobody can take it over meanwhile, and a
# renewal from another connection would only wait on that lock (SPEC 13a).
Idle = Callable[[], bool] | None


def _idle(idle: Idle) -> bool:
    return idle is not None and idle()


class Heartbeat:
    """Renews a sync claim's lease every ``policy.heartbeat_s`` while its handler runs (SPEC 13)."""

    def __init__(
        self, store: Store, id: str, token: int, policy: Policy, *, idle: Idle = None
    ) -> None:
        self._store, self._id, self._token, self._policy = store, id, token, policy
        self._idle = idle
        self._active = False
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._active = True
        _scheduler.schedule(self, time.monotonic() + self._policy.heartbeat_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False  # a due entry for an inactive beat is skipped

    def beat(self) -> None:
        if not self._active:
            return
        try:
            if _idle(self._idle):
                pass
            elif not self._store.renew(self._id, self._token, self._policy.lease_s):
                self.lost = True
                _lost(self._id)
                return
        except StoreError as exc:  # keep trying: the lease may still outlive the outage
            log.warning("heartbeat for claim %s failed: %s", self._id[:12], exc)
        if self._active:
            _scheduler.schedule(self, time.monotonic() + self._policy.heartbeat_s)


class AsyncHeartbeat:
    """Renews an async claim's lease every ``policy.heartbeat_s`` while its handler runs.

    Nothing runs until the first beat is due (a ``call_later`` handle), so a fast handler
    pays only for scheduling and cancelling one timer.
    """

    def __init__(
        self, store: AsyncStore, id: str, token: int, policy: Policy, *, idle: Idle = None
    ) -> None:
        self._store, self._id, self._token, self._policy = store, id, token, policy
        self._idle = idle
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    async def __aenter__(self) -> AsyncHeartbeat:
        self._schedule()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self._policy.heartbeat_s, self._start_beat)

    def _start_beat(self) -> None:
        self._handle = None
        self._task = asyncio.create_task(self._beat(), name="onceonly-heartbeat")

    async def _beat(self) -> None:
        try:
            if _idle(self._idle):
                pass
            elif not await self._store.arenew(self._id, self._token, self._policy.lease_s):
                self.lost = True
                _lost(self._id)
                return
        except StoreError as exc:
            log.warning("heartbeat for claim %s failed: %s", self._id[:12], exc)
        self._task = None
        self._schedule()

"""The claim loop, written once as a generator and driven by a sync and an async driver.

The generator yields store operations and receives their results (the httpx auth-flow
pattern), so the loop "claim, decide, maybe wait, claim again" exists once. The
drivers are the only place that touch a store. Heartbeats are the one sync/async twin.

Below the claim, what every adapter (ASGI, WSGI, ``@idempotent``) shares to settle a claim:
:func:`settle_record`, and for an atomic execution (SPEC 13a) the unit's steps - open it
(:func:`open_unit`), bind it while the handler runs (:func:`bound_unit`), end it
(:func:`finish`): a ``Complete`` settlement commits the record with the handler's writes, a
``Release`` rolls them back and releases the claim (SPEC 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from retrysafe._decide import Complete, Decision, Release, Settlement, Wait, decide
from retrysafe._lease import EXPIRED, TAKEN_OVER, Lease
from retrysafe._policy import Policy
from retrysafe._records import CACHE_HIT, ClaimResult, Existing
from retrysafe._shield import shield_awaited, shielded
from retrysafe.errors import AtomicUnsupported, StoreError
from retrysafe.stores import AsyncStore, AtomicStore, AtomicUnit, Store

log = logging.getLogger("retrysafe")


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
# A claim a process-local cache answered (``stores/cached.py``) is reported as CACHE_HIT
# (_records.py): it made no store round trip, so it must not count as store latency.
StoreTimer = Callable[[str, float], None]


def claim_op(result: ClaimResult | None) -> str:
    """The name a claim's time is reported under: ``claim``, or CACHE_HIT for a cache answer."""
    return CACHE_HIT if type(result) is Existing and result.cached else "claim"


def claim_flow(
    id: str,
    fingerprint: str,
    policy: Policy,
    *,
    waiting: Wait | None = None,
    started: float | None = None,
) -> Flow:
    """Claim; while the first attempt is in flight, watch and claim again (SPEC 7-10).

    ``waiting`` resumes a flow whose first claim was already made and answered :class:`Wait`
    (by :func:`claim_decision`), ``started`` being when that claim began.
    """
    if started is None:
        started = time.monotonic()
    decision: Decision | None = waiting
    while True:
        if isinstance(decision, Wait):
            yield WatchOp(id, decision.timeout)
        result = yield ClaimOp(id, fingerprint, policy.lease_s)
        assert result is not None
        decision = decide(result, fingerprint, time.monotonic() - started, policy)
        if not isinstance(decision, Wait):
            return decision


def run_flow(flow: Flow, store: Store, timer: StoreTimer | None = None) -> Decision:
    """Drive ``flow`` against a sync store, timing each operation for ``timer``."""
    op = next(flow)
    while True:
        started = time.perf_counter()
        match op:
            case ClaimOp(id, fingerprint, lease):
                answer: ClaimResult | None = store.claim(id, fingerprint, lease)
                name = claim_op(answer)
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
                name = claim_op(answer)
            case WatchOp(id, timeout):
                await store.awatch(id, timeout)
                answer, name = None, "watch"
        if timer is not None:
            timer(name, time.perf_counter() - started)
        try:
            op = flow.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


# Most claims are answered at once (execute, replay, refuse): these make the first claim
# directly and start the generator above only to wait, so the loop still exists once.


def claim_decision(
    store: Store, id: str, fingerprint: str, policy: Policy, timer: StoreTimer | None = None
) -> Decision:
    """Claim ``id`` and decide (SPEC 7-10): the first claim inline, waits through the flow."""
    started = time.monotonic()
    result = store.claim(id, fingerprint, policy.lease_s)
    took = time.monotonic() - started
    if timer is not None:
        timer(claim_op(result), took)
    decision = decide(result, fingerprint, took, policy)
    if isinstance(decision, Wait):
        flow = claim_flow(id, fingerprint, policy, waiting=decision, started=started)
        return run_flow(flow, store, timer)
    return decision


async def aclaim_decision(
    store: AsyncStore, id: str, fingerprint: str, policy: Policy, timer: StoreTimer | None = None
) -> Decision:
    """The async twin of :func:`claim_decision`."""
    started = time.monotonic()
    result = await store.aclaim(id, fingerprint, policy.lease_s)
    took = time.monotonic() - started
    if timer is not None:
        timer(claim_op(result), took)
    decision = decide(result, fingerprint, took, policy)
    if isinstance(decision, Wait):
        flow = claim_flow(id, fingerprint, policy, waiting=decision, started=started)
        return await arun_flow(flow, store, timer)
    return decision


class _BeatScheduler:
    """One daemon thread keeps the due times of every sync heartbeat and hands each due
    renewal to a small pool of worker threads (SPEC 13).

    A thread per request would cost more than the request, and most handlers finish long
    before their first heartbeat, so registering is a dict insert and finishing a dict pop,
    under a plain lock. (A heap of due times kept every finished request's entry, and the
    handler's objects with it, until that entry came due, and cost a thread liveness check
    per request.) The thread sleeps until the earliest beat is due and is woken only when a
    new beat is due earlier still; the dict holds the beats of requests in flight, so finding
    the next one is a scan of a few entries. The renewals themselves run on the pool, not on
    the timing thread: a renewal blocked on a store (a SQLite writer holding the lock for its
    busy timeout, a server store timing out) must not hold up the renewals of other claims,
    whose leases would lapse meanwhile.
    """

    RENEWERS = 8  # renewals in flight at once; a beat is re-armed only after its renewal ends

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start empty, with no threads (in a forked child, the parent's threads are gone)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._due: dict[Heartbeat, float] = {}
        self._wake_at = math.inf  # when the thread wakes next (inf: when notified)
        self._thread: threading.Thread | None = None
        self._renewers: ThreadPoolExecutor | None = None

    def schedule(self, beat: Heartbeat, due: float) -> None:
        with self._lock:
            self._due[beat] = due
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="retrysafe-heartbeat", daemon=True
                )
                self._thread.start()
            if due < self._wake_at:
                self._wake_at = due
                self._cond.notify()

    def cancel(self, beat: Heartbeat) -> None:
        with self._lock:
            self._due.pop(beat, None)

    def _run(self) -> None:
        try:
            while True:
                for beat in self._take_due():
                    if self._renewers is None:
                        self._renewers = ThreadPoolExecutor(
                            self.RENEWERS, thread_name_prefix="retrysafe-renew"
                        )
                    self._renewers.submit(beat.beat)
        finally:  # only if something unexpected was raised: the next schedule starts anew
            with self._lock:
                self._thread, self._wake_at = None, math.inf

    def _take_due(self) -> list[Heartbeat]:
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [beat for beat, due in self._due.items() if due <= now]
                for beat in ready:
                    del self._due[beat]
                self._wake_at = min(self._due.values(), default=math.inf)
                if ready:
                    return ready
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)


_scheduler = _BeatScheduler()
os.register_at_fork(after_in_child=_scheduler.forget)

# A heartbeat skips a renewal while ``idle()`` is true: an atomic handler's open transaction
# holds the record itself (SQLite's write lock), so nobody can take it over meanwhile, and a
# renewal from another connection would only wait on that lock (SPEC 13a).
Idle = Callable[[], bool] | None


def _idle(idle: Idle) -> bool:
    return idle is not None and idle()


def _renewal_failed(lease: Lease, id: str, exc: StoreError) -> bool:
    """A renewal could not reach the store; True (stop renewing) once the lease ran out."""
    log.warning("heartbeat for claim %s failed: %s", id[:12], exc)
    if time.monotonic() < lease.expires:
        return False  # keep trying: the lease may still outlive the outage
    lease.lose(EXPIRED)  # a duplicate may have taken the key over meanwhile
    return True


class _Beat:
    """What a sync and an async heartbeat share: the claim they renew and its :class:`Lease`."""

    __slots__ = ("_id", "_idle", "_policy", "_store", "_token", "lease", "period")

    def __init__(
        self,
        store: Store | AsyncStore,
        id: str,
        token: int,
        policy: Policy,
        *,
        idle: Idle = None,
        lease: Lease | None = None,
    ) -> None:
        self._store, self._id, self._token, self._policy = store, id, token, policy
        self._idle = idle
        self.period = policy.heartbeat_s
        self.lease = lease if lease is not None else Lease(id, time.monotonic(), policy.lease_s)

    @property
    def lost(self) -> bool:
        """Whether the claim was lost (taken over, or not renewed before the lease ran out)."""
        return self.lease.lost


class Heartbeat(_Beat):
    """Renews a sync claim's lease every ``policy.heartbeat_s`` while its handler runs (SPEC 13).

    ``begin()`` and ``end()`` bracket the handler (or ``with heartbeat:``); renewals run on
    the shared scheduler's threads (:class:`_BeatScheduler`).
    """

    __slots__ = ("_active",)
    _store: Store

    def __init__(
        self,
        store: Store,
        id: str,
        token: int,
        policy: Policy,
        *,
        idle: Idle = None,
        lease: Lease | None = None,
    ) -> None:
        super().__init__(store, id, token, policy, idle=idle, lease=lease)
        self._active = False

    def __enter__(self) -> Heartbeat:
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.end()

    def begin(self) -> Heartbeat:
        """Start renewing (the first beat is due one period from now)."""
        self._active = True
        _scheduler.schedule(self, time.monotonic() + self.period)
        return self

    def end(self) -> None:
        """Stop renewing (a renewal in progress finishes, but schedules no other)."""
        self._active = False
        _scheduler.cancel(self)

    def beat(self) -> None:
        if not self._active:
            return
        lease, sent = self.lease, time.monotonic()
        try:
            # An open atomic transaction holds the record: as good as a renewal.
            if not _idle(self._idle) and not self._store.renew(
                self._id, self._token, self._policy.lease_s
            ):
                lease.lose(TAKEN_OVER)
                return
            lease.renewed(sent, self._policy.lease_s)
        except StoreError as exc:
            if _renewal_failed(lease, self._id, exc):
                return
        if self._active:
            _scheduler.schedule(self, time.monotonic() + self.period)


class _LoopBeats:
    """Every async heartbeat of one event loop, behind one timer (SPEC 13).

    A timer per request (``call_later`` + ``cancel``) cost more than everything else the
    memory store does for a request, and its cancelled handles pile up in the loop's heap.
    Here registering is a dict insert and finishing a dict pop; the one timer is set for the
    earliest beat due and, when it fires, starts every beat due within a tenth of its period
    (renewing a little early is harmless: a renewal only ever extends the lease).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = self._loop = loop
        self._due: dict[AsyncHeartbeat, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, beat: AsyncHeartbeat, period: float) -> None:
        due = self._loop.time() + period
        self._due[beat] = due
        if due < self._timer_at:
            self._set_timer(due)

    def discard(self, beat: AsyncHeartbeat) -> None:
        self._due.pop(beat, None)  # the timer stays: firing with nothing due costs nothing

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        later = math.inf
        for beat, due in list(self._due.items()):
            if due - beat.period / 10 <= now:
                del self._due[beat]
                beat.start()
            else:
                later = min(later, due)
        if later < math.inf:
            self._set_timer(later)


async def _cancelled(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Done:
    """An awaitable that is already done: ending a heartbeat that never beat costs no coroutine."""

    def __await__(self) -> Generator[None, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()

_loop_beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBeats] = (
    weakref.WeakKeyDictionary()
)


_last_beats: _LoopBeats | None = None  # almost every process runs one loop: skip the lookup


def _beats_of(loop: asyncio.AbstractEventLoop) -> _LoopBeats:
    global _last_beats
    beats = _last_beats
    if beats is not None and beats.loop is loop:
        return beats
    beats = _loop_beats.get(loop)
    if beats is None:
        beats = _loop_beats[loop] = _LoopBeats(loop)
    _last_beats = beats
    return beats


class AsyncHeartbeat(_Beat):
    """Renews an async claim's lease every ``policy.heartbeat_s`` while its handler runs.

    Nothing runs until the first beat is due, and all heartbeats of a loop share one timer
    (:class:`_LoopBeats`), so a fast handler pays for a dict insert and a dict pop.
    """

    __slots__ = ("_beats", "_task")
    _store: AsyncStore

    def __init__(
        self,
        store: AsyncStore,
        id: str,
        token: int,
        policy: Policy,
        *,
        idle: Idle = None,
        lease: Lease | None = None,
    ) -> None:
        super().__init__(store, id, token, policy, idle=idle, lease=lease)
        self._beats: _LoopBeats | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncHeartbeat:
        return self.begin()

    async def __aexit__(self, *exc: object) -> None:
        await self.end()

    def begin(self) -> AsyncHeartbeat:
        """Start renewing (the first beat is due one period from now)."""
        self._beats = _beats_of(asyncio.get_running_loop())
        self._beats.add(self, self.period)
        return self

    def end(self) -> Awaitable[None]:
        """Stop renewing; await the result, which waits for a renewal in progress to stop."""
        beats, self._beats = self._beats, None
        if beats is not None:
            beats.discard(self)
        task, self._task = self._task, None
        if task is None:
            return _DONE
        task.cancel()
        return _cancelled(task)

    def start(self) -> None:
        """Called by the loop's timer when this beat is due."""
        self._task = asyncio.create_task(self._beat(), name="retrysafe-heartbeat")

    async def _beat(self) -> None:
        lease, sent = self.lease, time.monotonic()
        try:
            if not _idle(self._idle) and not await self._store.arenew(
                self._id, self._token, self._policy.lease_s
            ):
                lease.lose(TAKEN_OVER)
                return
            lease.renewed(sent, self._policy.lease_s)
        except StoreError as exc:
            if _renewal_failed(lease, self._id, exc):
                return
        self._task = None
        if self._beats is not None:  # still running: due again one period from now
            self._beats.add(self, self.period)


class SettleRetry:
    """When to try a failed completion (or release) again, if at all (no I/O, no clock).

    Backoff from 50 ms, doubling to 1 s, for at most ``policy.settle_retry`` after the first
    failure, and never an attempt at or past the lease's end: from then on a duplicate may
    take the key over, and the answer must not wait on a record that is no longer ours.
    """

    FIRST_S = 0.05
    MAX_S = 1.0

    __slots__ = ("_delay", "give_up_at")

    def __init__(self, policy: Policy, lease: Lease | None, failed_at: float) -> None:
        end = lease.expires if lease is not None else failed_at + policy.lease_s
        self.give_up_at = min(failed_at + policy.settle_retry_s, end)
        self._delay = self.FIRST_S

    def next_delay(self, now: float, lease: Lease | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (the error stands)."""
        delay = self._delay
        if now + delay >= self.give_up_at or (lease is not None and lease.lost):
            return None
        self._delay = min(delay * 2, self.MAX_S)
        return delay


def _apply(store: Store, id: str, token: int, settlement: Settlement, policy: Policy) -> bool:
    match settlement:
        case Complete(response):
            return store.complete(id, token, response, policy.ttl_s, policy.retention_s)
        case Release():
            return store.release(id, token)


def _aapply(
    store: AsyncStore, id: str, token: int, settlement: Settlement, policy: Policy
) -> Coroutine[Any, Any, bool]:
    match settlement:
        case Complete(response):
            return store.acomplete(id, token, response, policy.ttl_s, policy.retention_s)
        case Release():
            return store.arelease(id, token)


def _name(settlement: Settlement) -> str:
    return "complete" if type(settlement) is Complete else "release"


def settle_record(
    store: Store,
    id: str,
    token: int,
    settlement: Settlement,
    policy: Policy,
    lease: Lease | None = None,
) -> str:
    """Apply ``settlement`` to a held claim: one store round trip (SPEC 12), retried while the
    store fails, as :class:`SettleRetry` allows (within the lease).

    Returns the store operation's name ("complete" or "release") for telemetry. A fenced-out
    token is logged and marks ``lease`` lost, not raised: the handler's result still goes to its
    caller. A store error that outlasts the retries propagates; the claim then stays in flight
    until its lease lapses (outcome "recovered"), and the caller must not present the answer
    as final.
    """
    try:
        ok = _apply(store, id, token, settlement, policy)
    except StoreError as exc:
        retry = SettleRetry(policy, lease, time.monotonic())
        while True:  # the first attempt inline, as ever: only a failure pays for the loop
            delay = retry.next_delay(time.monotonic(), lease)
            if delay is None:
                raise exc
            _retrying(id, exc, delay)
            time.sleep(delay)
            try:
                ok = _apply(store, id, token, settlement, policy)
                break
            except StoreError as again:
                exc = again
    if not ok:
        _fenced(id, lease)
    return _name(settlement)


async def asettle_record(
    store: AsyncStore,
    id: str,
    token: int,
    settlement: Settlement,
    policy: Policy,
    lease: Lease | None = None,
) -> str:
    """:func:`settle_record` for async stores, shielded: a cancelled request (client gone,
    server shutting down, a timeout around a tool) must still settle its record, or its
    duplicates would wait for the lease to lapse. The retries after a failure are shielded as
    a whole (a request cancelled during its first attempt gets none)."""
    try:
        ok = await shield_awaited(_aapply(store, id, token, settlement, policy))
    except StoreError as exc:
        ok = await shield_awaited(_aretried(store, id, token, settlement, policy, lease, exc))
    if not ok:
        _fenced(id, lease)
    return _name(settlement)


async def _aretried(
    store: AsyncStore,
    id: str,
    token: int,
    settlement: Settlement,
    policy: Policy,
    lease: Lease | None,
    exc: StoreError,
) -> bool:
    retry = SettleRetry(policy, lease, time.monotonic())
    while True:
        delay = retry.next_delay(time.monotonic(), lease)
        if delay is None:
            raise exc
        _retrying(id, exc, delay)
        await asyncio.sleep(delay)
        try:
            return await _aapply(store, id, token, settlement, policy)
        except StoreError as again:
            exc = again


def _retrying(id: str, exc: StoreError, delay: float) -> None:
    log.warning(
        "could not settle idempotency record %s (%s); retrying in %.0f ms",
        id[:12],
        exc,
        delay * 1e3,
    )


def _fenced(id: str, lease: Lease | None) -> None:
    log.warning("idempotency record %s was fenced out before it settled", id[:12])
    if lease is not None:
        lease.lose(TAKEN_OVER)


# -- atomic execution (SPEC 13a) ----------------------------------------------------------------

_running_unit: ContextVar[AtomicUnit | None] = ContextVar("retrysafe_atomic_unit", default=None)


def running_unit() -> AtomicUnit | None:
    """The atomic unit of the handler or function running now, None outside one
    (``retrysafe.atomic`` reads it)."""
    return _running_unit.get()


@contextlib.contextmanager
def bound_unit(unit: AtomicUnit | None) -> Iterator[None]:
    """Make ``unit`` the running unit while the handler runs (None: no atomic execution)."""
    if unit is None:
        yield
        return
    reset = _running_unit.set(unit)
    try:
        yield
    finally:
        _running_unit.reset(reset)


class Ending(enum.Enum):
    """How an atomic execution ended."""

    COMMITTED = "committed"  # the record and the handler's writes are durable together
    RELEASED = "released"  # writes rolled back, claim released: a retry runs again
    TAKEN_OVER = "taken_over"  # fenced out at commit: writes rolled back, another attempt holds it


def require_atomic(store: object) -> AtomicStore:
    """``store`` as an :class:`AtomicStore`, or :class:`AtomicUnsupported` saying why not."""
    if not isinstance(store, AtomicStore):
        name = type(store).__name__
        raise AtomicUnsupported(
            f"{name} cannot complete records atomically with the application's writes: only "
            "a store in the same SQL database as those writes can (sqlite:///..., "
            "postgresql://...); use one of those, or drop atomic=True"
        )
    return store


def atomic_policy(policy: Policy) -> Policy:
    """The policy of an atomic middleware: a key is required on every covered request.

    An atomic handler's writes commit only together with a record, and a keyless request has
    none: ``atomic.transaction()`` would raise NoAtomicContext and the client get a 500. The
    request is refused with 400 missing-key instead, before the handler runs. A callable
    ``required`` is the application's own choice of which requests need a key: it is kept.
    """
    return policy.replace(required=True) if policy.required is False else policy


def open_unit(store: object, id: str, token: int, fingerprint: str, policy: Policy) -> AtomicUnit:
    unit = require_atomic(store).unit(
        id, token, fingerprint, policy.lease_s, policy.ttl_s + policy.retention_s
    )
    unit.load()
    return unit


async def aopen_unit(
    store: object, id: str, token: int, fingerprint: str, policy: Policy
) -> AtomicUnit:
    unit = require_atomic(store).unit(
        id, token, fingerprint, policy.lease_s, policy.ttl_s + policy.retention_s
    )
    await unit.aload()
    return unit


def _flushed(unit: AtomicUnit, store: Store) -> None:
    """Flush pending ORM changes; a failure there is the handler's failure (SPEC 12)."""
    try:
        unit.flush()
    except BaseException:
        unit.abort()
        store.release(unit.id, unit.token)
        raise


def finish(unit: AtomicUnit, store: Store, what: Settlement, policy: Policy) -> Ending:
    """Commit or roll back ``unit`` as ``what`` says; always gives its connection back.

    A :class:`StoreError` while committing propagates: nothing was committed, and the claim
    stays in flight until its lease lapses (a retry then runs cleanly).
    """
    try:
        if unit.lost:  # refused earlier; the handler's answer (maybe a 500) is moot
            unit.abort()
            return Ending.TAKEN_OVER
        match what:
            case Complete(response):
                _flushed(unit, store)
                ok = unit.complete(response, policy.ttl_s, policy.retention_s)
                return Ending.COMMITTED if ok else Ending.TAKEN_OVER
            case Release():
                unit.abort()
                try:
                    store.release(unit.id, unit.token)
                except StoreError as exc:  # the writes are gone; the lease lapses in time
                    log.error("could not release idempotency record %s: %s", unit.id[:12], exc)
                return Ending.RELEASED
    finally:
        unit.close()


async def afinish(unit: AtomicUnit, store: AsyncStore, what: Settlement, policy: Policy) -> Ending:
    """:func:`finish` for async adapters; shielded, so a cancelled request still settles."""
    return await shielded(_afinish(unit, store, what, policy))


async def _afinish(unit: AtomicUnit, store: AsyncStore, what: Settlement, policy: Policy) -> Ending:
    try:
        if unit.lost:
            await unit.aabort()
            return Ending.TAKEN_OVER
        match what:
            case Complete(response):
                try:
                    await unit.aflush()
                except BaseException:
                    await unit.aabort()
                    await store.arelease(unit.id, unit.token)
                    raise
                ok = await unit.acomplete(response, policy.ttl_s, policy.retention_s)
                return Ending.COMMITTED if ok else Ending.TAKEN_OVER
            case Release():
                await unit.aabort()
                try:
                    await store.arelease(unit.id, unit.token)
                except StoreError as exc:
                    log.error("could not release idempotency record %s: %s", unit.id[:12], exc)
                return Ending.RELEASED
    finally:
        await unit.aclose()

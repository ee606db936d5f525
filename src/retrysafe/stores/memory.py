"""The in-memory store: the reference model, and the store for tests and single processes.

Every operation is O(1) amortized: records live in a dict; a heap of (deadline, id) entries
drops records past their retention (or abandoned claims) lazily, a few at a time, so no
operation ever scans all records.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Callable

from retrysafe.records import (
    Claimed,
    ClaimResult,
    Record,
    State,
    StoredResponse,
    as_tombstone,
    claim_on,
    complete_on,
    lease_left,
    release_allowed,
    renew_on,
    resolve,
    visible,
)
from retrysafe.stores._notify import Notifier
from retrysafe.stores._stats import KeyStats, tally

Clock = Callable[[], float]
_SWEEP_BATCH = 8
# An abandoned claim (holder died, nobody retried) is dropped this long after its lease lapsed;
# until then a retry is reported as "recovered", after it as a plain first execution.
ABANDONED_GRACE = 3600.0
# Python 3.11 reads an Enum member through EnumType.__getattr__: the per-request paths below use
# these names instead.
_IN_FLIGHT, _TOMBSTONE = State.IN_FLIGHT, State.TOMBSTONE


class MemoryStore:
    """A process-local store. ``clock`` is the store clock (seconds), injectable for tests."""

    def __init__(self, *, clock: Clock = time.time, url: str = "memory://") -> None:
        self.url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._last_token = 0  # every token minted so far is <= this (fencing across releases)
        self._notifier = Notifier()

    def __len__(self) -> int:
        return len(self._records)

    # -- sync ---------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        with self._lock:
            now = self._clock()
            if self._deadlines and self._deadlines[0][0] <= now:
                self._sweep(now)
            current = self._records.get(id)
            result, record = claim_on(current, id, fingerprint, lease, now, self._last_token)
            if record is not current:
                self._put(record, current)
            if type(result) is Claimed:
                self._last_token = result.token
            return result

    def renew(self, id: str, token: int, lease: float) -> bool:
        with self._lock:
            current = self._records.get(id)
            record = renew_on(current, token, lease, self._clock())
            if record is None:
                return False
            self._put(record, current, schedule=False)
            return True

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        with self._lock:
            current = self._records.get(id)
            record = complete_on(current, token, response, ttl, retention, self._clock())
            if record is None:
                return False
            self._put(record, current)
        self._notifier.notify(id)
        return True

    def release(self, id: str, token: int) -> bool:
        with self._lock:
            if not release_allowed(self._records.get(id), token, self._clock()):
                return False
            del self._records[id]
        self._notifier.notify(id)
        return True

    def get(self, id: str) -> Record | None:
        with self._lock:
            return visible(self._records.get(id), self._clock())

    def watch(self, id: str, timeout: float) -> None:
        event, unsubscribe = self._notifier.thread_waiter(id)
        try:
            left = self._lease_left(id)
            if left > 0:
                event.wait(min(timeout, left))
        finally:
            unsubscribe()

    def delete(self, id: str) -> bool:
        with self._lock:
            # Found means "get would have returned it": a record past its retention that the
            # lazy sweep has not dropped yet is already gone as far as callers can tell.
            found = resolve(self._records.pop(id, None), self._clock()) is not State.ABSENT
        self._notifier.notify(id)
        return found

    def stats(self) -> KeyStats:
        """Records per state now (admin: ``retrysafe keys stats``)."""
        with self._lock:
            now = self._clock()
            return tally(str(resolve(r, now)) for r in self._records.values())

    def close(self) -> None:
        """Nothing to close; present for the protocol."""

    # -- async: nothing here blocks, so the coroutines call the sync methods ------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        return self.claim(id, fingerprint, lease)

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        return self.renew(id, token, lease)

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        return self.complete(id, token, response, ttl, retention)

    async def arelease(self, id: str, token: int) -> bool:
        return self.release(id, token)

    async def aget(self, id: str) -> Record | None:
        return self.get(id)

    async def awatch(self, id: str, timeout: float) -> None:
        event, unsubscribe = self._notifier.task_waiter(id)
        try:
            left = self._lease_left(id)
            if left > 0:
                async with asyncio.timeout(min(timeout, left)):
                    await event.wait()
        except TimeoutError:
            pass
        finally:
            unsubscribe()

    async def adelete(self, id: str) -> bool:
        return self.delete(id)

    async def aclose(self) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _lease_left(self, id: str) -> float:
        # Wake when the lease lapses too: the waiter then takes the claim over.
        with self._lock:
            return lease_left(self._records.get(id), self._clock())

    def _put(self, record: Record, previous: Record | None, *, schedule: bool = True) -> None:
        """Store ``record`` in place of ``previous``.

        Every live record has a heap entry due no later than its own deadline; the sweep
        pushes a record that is still alive back at its current deadline. So a record whose
        deadline moved later (a completion: the TTL is past the claim's abandonment
        deadline, by default) needs no new entry - one heap push per request, not two.
        """
        id = record.id
        self._records[id] = record
        if schedule and (
            previous is None
            or (previous.state is not record.state and _deadline(record) < _deadline(previous))
        ):
            heapq.heappush(self._deadlines, (_deadline(record), id))

    def _sweep(self, now: float) -> None:  # callers check that the earliest deadline is due
        # Lazy expiry: drop at most a few due records per operation. A heap entry may be stale
        # (the record changed since it was pushed); the record is only dropped if it is dead now.
        for _ in range(_SWEEP_BATCH):
            if not self._deadlines or self._deadlines[0][0] > now:
                return
            _, id = heapq.heappop(self._deadlines)
            record = self._records.get(id)
            if record is None:
                continue
            state = resolve(record, now)
            abandoned = state is State.IN_FLIGHT and now >= record.lease_until + ABANDONED_GRACE
            if state is State.ABSENT or abandoned:
                del self._records[id]
                continue
            if state is State.TOMBSTONE and record.state is not State.TOMBSTONE:
                record = self._records[id] = as_tombstone(record)  # the body goes at the TTL
            # still alive (renewed, re-claimed, now a tombstone): look again at its deadline
            heapq.heappush(self._deadlines, (_deadline(record), id))


def _deadline(record: Record) -> float:
    state = record.state
    if state is _IN_FLIGHT:
        return record.lease_until + ABANDONED_GRACE
    if state is _TOMBSTONE:
        return record.retain_until
    return record.expires_at

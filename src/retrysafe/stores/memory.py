"""The in-memory store: the reference model, and the store for tests and single processes.

Every operation is O(1) amortized: records live in a dict; a heap of (deadline, id) entries
drops records past their retention (or abandoned claims) lazily, a few at a time, so no
operation ever scans all records.

**Bounded.** The store holds at most ``max_records`` records and ``max_bytes`` bytes (bodies,
headers, ids and fingerprints, plus a fixed charge per record for Python's own objects). When a
new claim or a completion needs room, finished records go first - tombstones, then completed
records, oldest first - and a record in flight never does: evicting it would let a duplicate
run alongside the first attempt. A claim that finds only records in flight is refused with
:class:`~retrysafe.errors.StoreFull` (a 503 ``store-unavailable``: fail closed, SPEC 17). A
completion whose body cannot fit even after every finished record is gone is kept as
unreplayable (its status, not its body, as for a body over the cache cap, SPEC 15): the result
of work already done is never lost, and a retry is answered 409, never run twice.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from retrysafe._records import (
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
from retrysafe.errors import ConfigurationError, StoreFull
from retrysafe.stores._notify import Notifier
from retrysafe.stores._stats import KeyStats, tally

Clock = Callable[[], float]
_SWEEP_BATCH = 8
# The deadline heap is rebuilt from the live records once it holds this many entries more than
# twice their number (see _schedule): entries of evicted, released and deleted records.
_STALE_SLACK = 1024
# An abandoned claim (holder died, nobody retried) is dropped this long after its lease lapsed;
# until then a retry is reported as "recovered", after it as a plain first execution.
ABANDONED_GRACE = 3600.0
# Python 3.11 reads an Enum member through EnumType.__getattr__: the per-request paths below use
# these names instead.
_IN_FLIGHT, _TOMBSTONE = State.IN_FLIGHT, State.TOMBSTONE
# The default bound: room for a day of traffic at about one new key a second, in a few hundred
# MiB of the process at most. Size it to (new keys per second) x (TTL + retention).
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
# Records are kept packed (see _pack): a full store of Records, NamedTuples that hold an Enum
# member, stayed tracked by the cyclic GC, and each full collection walked all of them: at the
# default bound a 30 ms pause alone and 60-130 ms under a server's load, in which every request
# in flight waited (bench/README.md, "The memory store and the GC").
Packed = tuple[Any, ...]
_STATES = {state.value: state for state in State}
# What a record costs beyond its strings and body: the Record and StoredResponse tuples, the
# dict and order entries, a heap entry (tracemalloc: about 500 bytes on CPython 3.11).
RECORD_OVERHEAD = 512


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_RECORDS", "MemoryStore"]


class MemoryStore:
    """A process-local store. ``clock`` is the store clock (seconds), injectable for tests."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        url: str = "memory://",
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_records < 1:
            raise ConfigurationError(
                f"MemoryStore max_records must be at least 1, not {max_records}"
            )
        if max_bytes < RECORD_OVERHEAD:
            raise ConfigurationError(
                f"MemoryStore max_bytes must be at least {RECORD_OVERHEAD} (one record), "
                f"not {max_bytes}"
            )
        self.url = url
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, Packed] = {}
        self._deadlines: list[tuple[float, str]] = []
        # The eviction candidates, id -> the bytes it is charged, in the order the records
        # finished (tombstones go first). A record in flight is in neither: never evicted.
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0  # charged for the records held (see _size)
        self._evictable = 0  # of which finished records
        self._last_token = 0  # every token minted so far is <= this (fencing across releases)
        self._notifier = Notifier()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes_used(self) -> int:
        """Bytes charged for the records held now (at most ``max_bytes``)."""
        return self._bytes

    # -- sync ---------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        with self._lock:
            now = self._clock()
            if self._deadlines and self._deadlines[0][0] <= now:
                # At the bound, every dead record goes before anything live is evicted.
                new = RECORD_OVERHEAD + len(id) + len(fingerprint)
                self._sweep(now, everything=self._short_of(1, new))
            current = self._record(id)
            result, record = claim_on(current, id, fingerprint, lease, now, self._last_token)
            if record is not current:
                self._make_room(record, current)
                self._put(record, current)
            if type(result) is Claimed:
                self._last_token = result.token
            return result

    def renew(self, id: str, token: int, lease: float) -> bool:
        with self._lock:
            current = self._record(id)
            record = renew_on(current, token, lease, self._clock())
            if record is None:
                return False
            self._put(record, current, schedule=False)
            return True

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        with self._lock:
            now = self._clock()
            current = self._record(id)
            record = complete_on(current, token, response, ttl, retention, now)
            if record is None:
                return False
            grow = _size(record) - _size(current) if current is not None else 0
            if self._short_of(0, grow) and self._deadlines and self._deadlines[0][0] <= now:
                self._sweep(now, everything=True)  # safe: our own claim is live, it stays
            if not self._make_room(record, current, refuse=False):
                # Not even evicting every finished record makes room for this body: keep the
                # outcome without it (SPEC 15), so a retry is refused rather than run again.
                kept = StoredResponse(
                    response.status, (), b"", False, response.trace_id, response.span_id
                )
                record = complete_on(current, token, kept, ttl, retention, now)
                assert record is not None  # the same holder as a moment ago, under the lock
            self._put(record, current)
        self._notifier.notify(id)
        return True

    def release(self, id: str, token: int) -> bool:
        with self._lock:
            if not release_allowed(self._record(id), token, self._clock()):
                return False
            self._drop(id)
        self._notifier.notify(id)
        return True

    def get(self, id: str) -> Record | None:
        with self._lock:
            return visible(self._record(id), self._clock())

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
            found = resolve(self._drop(id), self._clock()) is not State.ABSENT
        self._notifier.notify(id)
        return found

    def stats(self) -> KeyStats:
        """Records per state now (admin: ``retrysafe keys stats``)."""
        with self._lock:
            now = self._clock()
            return tally(str(resolve(_unpack(r), now)) for r in self._records.values())

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
            return lease_left(self._record(id), self._clock())

    def _record(self, id: str) -> Record | None:
        packed = self._records.get(id)
        return None if packed is None else _unpack(packed)

    def _put(self, record: Record, previous: Record | None, *, schedule: bool = True) -> None:
        """Store ``record`` in place of ``previous``.

        Every live record has a heap entry due no later than its own deadline; the sweep
        pushes a record that is still alive back at its current deadline. So a record whose
        deadline moved later (a completion: the TTL is past the claim's abandonment
        deadline, by default) needs no new entry - one heap push per request, not two.
        """
        id = record.id
        self._records[id] = _pack(record)
        size = _size(record)
        if previous is None:
            self._bytes += size
        else:
            self._bytes += size - _size(previous)
            self._unfile(previous)
        if record.state is not _IN_FLIGHT:  # finished: a candidate for eviction, in order
            (self._tombstones if record.state is _TOMBSTONE else self._finished)[id] = size
            self._evictable += size
        if schedule and (
            previous is None
            or (previous.state is not record.state and _deadline(record) < _deadline(previous))
        ):
            self._schedule(_deadline(record), id)

    def _schedule(self, deadline: float, id: str) -> None:
        """Push a heap entry, first rebuilding the heap if stale entries outnumber live ones.

        A record dropped before its deadline (evicted, released, deleted) leaves its entry
        behind until that deadline, which may be a day away: without this the heap of a store
        at its bound would grow by one entry per new key, unbounded. Rebuilding costs one pass
        over the records, after at least as many pushes: O(1) amortized.
        """
        heap = self._deadlines
        if len(heap) > 2 * len(self._records) + _STALE_SLACK:
            heap[:] = [(_deadline(_unpack(row)), key) for key, row in self._records.items()]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, id))

    def _unfile(self, record: Record) -> None:
        """Take ``record`` out of the eviction orders (if it is in one)."""
        size = self._tombstones.pop(record.id, None)
        if size is None:
            size = self._finished.pop(record.id, None)
        if size is not None:
            self._evictable -= size

    def _drop(self, id: str) -> Record | None:
        packed = self._records.pop(id, None)
        if packed is None:
            return None
        record = _unpack(packed)
        self._bytes -= _size(record)
        self._unfile(record)
        return record

    def _short_of(self, records: int, size: int) -> bool:
        """Would ``records`` more records and ``size`` more bytes break the bound?"""
        return (
            len(self._records) + records > self.max_records or self._bytes + size > self.max_bytes
        )

    def _sweep(self, now: float, *, everything: bool = False) -> None:
        # Lazy expiry: drop at most a few due records per operation (every due one when the
        # store is at its bound). A heap entry may be stale (the record changed since it was
        # pushed); the record is only dropped if it is dead now. Callers check that the
        # earliest deadline is due.
        for _ in range(len(self._deadlines) if everything else _SWEEP_BATCH):
            if not self._deadlines or self._deadlines[0][0] > now:
                return
            _, id = heapq.heappop(self._deadlines)
            record = self._record(id)
            if record is None:
                continue
            state = resolve(record, now)
            abandoned = state is State.IN_FLIGHT and now >= record.lease_until + ABANDONED_GRACE
            if state is State.ABSENT or abandoned:
                self._drop(id)
                continue
            if state is State.TOMBSTONE and record.state is not State.TOMBSTONE:
                tomb = as_tombstone(record)  # the body goes at the TTL
                self._put(tomb, record, schedule=False)
                record = tomb
            # still alive (renewed, re-claimed, now a tombstone): look again at its deadline
            heapq.heappush(self._deadlines, (_deadline(record), id))

    def _make_room(self, record: Record, previous: Record | None, *, refuse: bool = True) -> bool:
        """Evict finished records until ``record`` fits in place of ``previous``.

        Tombstones go first, then completed records, each oldest first; never a record in
        flight, never ``previous`` (the key being written). When even evicting every finished
        record would not make room, evict nothing and raise :class:`StoreFull` (``refuse``: a
        claim) or return False (a completion).
        """
        records = len(self._records) + (previous is None)
        used = self._bytes + _size(record) - (0 if previous is None else _size(previous))
        if records <= self.max_records and used <= self.max_bytes:
            return True
        # What eviction can free: every finished record except the one being replaced.
        mine = 0
        if previous is not None:
            mine = self._tombstones.get(previous.id) or self._finished.get(previous.id) or 0
        evictable = len(self._tombstones) + len(self._finished) - (mine > 0)
        if records - evictable > self.max_records or used - (self._evictable - mine) > (
            self.max_bytes
        ):
            if not refuse:
                return False
            raise StoreFull(
                "memory store",
                f"the memory store is full: {len(self._records)} records, "
                f"{self._bytes} bytes (max_records={self.max_records}, "
                f"max_bytes={self.max_bytes}), and not enough of them are finished to evict "
                "- the rest are in flight. Raise the bound (MemoryStore(max_records=..., "
                "max_bytes=...) or memory://?max_records=N&max_bytes=B), or use a SQLite, "
                "Redis or PostgreSQL store",
            )
        for order in (self._tombstones, self._finished):
            while order and (records > self.max_records or used > self.max_bytes):
                victim = next(iter(order))
                if previous is not None and victim == previous.id:
                    order.move_to_end(victim)  # the key being written: never its own victim
                    if next(iter(order)) == victim:
                        break
                    continue
                records -= 1
                used -= order[victim]
                self._drop(victim)
        # The oldest finished records went first, and theirs are usually the earliest deadlines:
        # their entries are at the top of the heap, and go now rather than at a rebuild.
        heap = self._deadlines
        while heap and heap[0][1] not in self._records:
            heapq.heappop(heap)
        return True


def _pack(record: Record) -> Packed:
    """``record`` as an exact tuple of strings, numbers, bytes and None (the state as its
    value, the response as a plain tuple), which the GC stops tracking at its next young
    collection: a tuple subclass or an Enum member inside would keep it tracked for good."""
    response = record.response
    return (
        record.id,
        record.fingerprint,
        record.state.value,
        record.token,
        record.lease_until,
        record.expires_at,
        record.retain_until,
        None if response is None else tuple(response),
        record.created_at,
        record.phase,
    )


def _unpack(packed: Packed) -> Record:
    response = packed[7]
    return Record(
        packed[0],
        packed[1],
        _STATES[packed[2]],
        packed[3],
        packed[4],
        packed[5],
        packed[6],
        None if response is None else StoredResponse(*response),
        packed[8],
        packed[9],
    )


def _size(record: Record) -> int:
    """Bytes a record is charged: its strings, its response, and a fixed overhead."""
    size = RECORD_OVERHEAD + len(record.id) + len(record.fingerprint)
    response = record.response
    if response is not None:
        size += len(response.body) + sum(len(k) + len(v) for k, v in response.headers)
    return size


def _deadline(record: Record) -> float:
    state = record.state
    if state is _IN_FLIGHT:
        return record.lease_until + ABANDONED_GRACE
    if state is _TOMBSTONE:
        return record.retain_until
    return record.expires_at

"""The logic of the process-local replay cache, shared by both faces of ``CachedStore``.

A completed record with a stored response cannot change until its TTL lapses (_records.py: the
only way out of COMPLETED is TTL_LAPSED; a delete is the admin's exception), so a process may
answer later claims of it from memory until then. This module holds that memory and its rules;
it does no I/O (the wrapper in ``cached.py`` talks to the store).

**Deadlines without comparing clocks.** Records carry store-clock times (SPEC 14) and the
store's clock may differ from this process's. An entry therefore never compares the two: it
turns the record's remaining life into a deadline on the local clock, measured from the moment
*before* the store call that revealed it.

- From a claim that answered a completed record: the store says ``now`` (``Existing.now``)
  together with ``expires_at``. The store read its clock after the local ``started``, so the
  record lives at least until ``started + (expires_at - now)`` on the local clock.
- From a completion made through the wrapper: the store stamped ``expires_at = its now + ttl``
  after the local ``started``, so the record lives at least until ``started + ttl``.

Only the two clocks' *rates* matter, and those are bounded: NTP slews a clock by at most
500 ppm. Each deadline is pulled in by a safety margin of ``MARGIN_S`` plus ``DRIFT`` (1000 ppm,
twice that bound) of the remaining life, so a cache entry always lapses before the store's
record does, and a claim after it reaches the store, which answers ``expired`` (SPEC 14).

**Races.** A delete through the wrapper (``forget``) bumps a generation: a store answer that was
in flight across the delete is not cached afterwards (it may show the deleted record).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from retrysafe._records import Claimed, ClaimResult, Existing, Record, State, StoredResponse
from retrysafe.errors import ConfigurationError

Clock = Callable[[], float]
MARGIN_S = 0.05  # seconds every deadline is pulled in by (scheduling jitter, clock steps)
DRIFT = 0.001  # and this fraction of the remaining life (twice NTP's 500 ppm slew bound)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Ticket(NamedTuple):
    """Taken just before a store call: when it started and the delete generation then."""

    started: float
    generation: int


class _Entry(NamedTuple):
    answer: Existing  # what a claim of this id answers, ready-made
    deadline: float  # local clock: no answer from here at or after it
    size: int


class _Pending(NamedTuple):
    """A claim this process holds (made through the wrapper), until it completes or releases."""

    fingerprint: str
    token: int
    lease: float
    claimed_at: float  # the store clock, estimated


def entry_size(response: StoredResponse) -> int:
    """Bytes an entry is charged: the body and the header names and values."""
    return len(response.body) + sum(len(k) + len(v) for k, v in response.headers)


def deadline_after(started: float, remaining: float) -> float:
    """The local deadline of a record that lives ``remaining`` more seconds from ``started``."""
    return started + remaining - MARGIN_S - DRIFT * remaining


class ReplayCache:
    """An LRU of completed records bounded by count and body bytes; thread-safe, no I/O."""

    def __init__(
        self, max_records: int, max_bytes: int = DEFAULT_MAX_BYTES, *, clock: Clock = time.monotonic
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ConfigurationError(
                f"replay cache bounds must be >= 1 (max_records={max_records}, "
                f"max_bytes={max_bytes}); leave the cache off instead of sizing it to zero"
            )
        self.max_records, self.max_bytes = max_records, max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        # store clock - local clock, learnt from each store answer that carries the store's
        # time; only used to fill in the times of a record built from a completion (reporting).
        self._offset = time.time() - clock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes held (see :func:`entry_size`)."""
        return self._bytes

    # -- the wrapper's hooks -------------------------------------------------------------

    def answer(self, id: str) -> Existing | None:
        """The cached answer to a claim of ``id``, or None (absent, or past its deadline)."""
        with self._lock:
            entry = self._entries.get(id)
            if entry is None:
                return None
            if self.clock() >= entry.deadline:
                self._drop(id)
                return None
            self._entries.move_to_end(id)
            self.hits += 1
            return entry.answer

    def ticket(self) -> Ticket:
        """Take this before a store call whose answer may be cached."""
        return Ticket(self.clock(), self._generation)

    def claimed(
        self, ticket: Ticket, id: str, fingerprint: str, lease: float, result: ClaimResult
    ) -> None:
        """Learn from a claim's answer: remember our own claim, or cache a completed record."""
        if type(result) is Claimed:
            with self._lock:
                claimed_at = ticket.started + self._offset
                self._pending[id] = _Pending(fingerprint, result.token, lease, claimed_at)
                self._pending.move_to_end(id)
                if len(self._pending) > self.max_records:  # holders that never settled
                    self._pending.popitem(last=False)
            return
        assert isinstance(result, Existing)
        record, now = result.record, result.now
        if record.state is not State.COMPLETED or record.response is None or now is None:
            return
        with self._lock:
            self._offset = now - ticket.started
        self._keep(ticket, record, deadline_after(ticket.started, record.expires_at - now))

    def completed(
        self,
        ticket: Ticket,
        id: str,
        token: int,
        response: StoredResponse,
        ttl: float,
        retention: float,
        ok: bool,
    ) -> None:
        """Learn from a completion through the wrapper: cache it if it stored a response."""
        pending = self._settled(id, token)
        if not ok or pending is None or not response.replayable:
            return
        now = ticket.started + self._offset  # the store's times, estimated: for reporting only
        record = Record(
            id,
            pending.fingerprint,
            State.COMPLETED,
            token,
            pending.claimed_at + pending.lease,
            now + ttl,
            now + ttl + retention,
            response,
            pending.claimed_at,
        )
        self._keep(ticket, record, deadline_after(ticket.started, ttl))

    def released(self, id: str, token: int) -> None:
        self._settled(id, token)

    def forget(self, id: str) -> None:
        """Drop ``id`` (deleted through the wrapper) and disown answers still on their way."""
        with self._lock:
            self._generation += 1
            self._drop(id)
            self._pending.pop(id, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._pending.clear()
            self._bytes = 0

    # -- internals -----------------------------------------------------------------------

    def _settled(self, id: str, token: int) -> _Pending | None:
        with self._lock:
            pending = self._pending.get(id)
            if pending is None or pending.token != token:
                return None
            del self._pending[id]
            return pending

    def _keep(self, ticket: Ticket, record: Record, deadline: float) -> None:
        assert record.response is not None
        size = entry_size(record.response)
        if size > self.max_bytes:
            return
        with self._lock:
            if ticket.generation != self._generation or self.clock() >= deadline:
                return
            self._drop(record.id)
            self._entries[record.id] = _Entry(Existing(record, None, True), deadline, size)
            self._bytes += size
            while len(self._entries) > self.max_records or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)

    def _drop(self, id: str) -> None:  # with the lock held
        entry = self._entries.pop(id, None)
        if entry is not None:
            self._bytes -= entry.size

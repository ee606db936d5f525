"""What a store holds for one key, and the one table of how it may change.

Everything here is plain frozen data; stores build these values and the core reads them.

Record life cycle (SPEC rules 7, 12-15), the table below is the whole truth::

    (absent) --claim--> IN_FLIGHT --complete--> COMPLETED --ttl--> TOMBSTONE --retention--> (absent)
                          |   ^  \\--complete_unreplayable--> UNREPLAYABLE --ttl--> TOMBSTONE
                          |   |
                          |   +-- takeover (lease lapsed; new fencing token; outcome "recovered")
                          +--release--> (absent)          (5xx or exception: a retry runs again)
    TOMBSTONE --claim--> IN_FLIGHT                          (outcome "expired")
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

from retrysafe.errors import IllegalTransition


class State(enum.Enum):
    """The state of a stored record. ``ABSENT`` is "no record" (or one past its retention)."""

    ABSENT = "absent"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    UNREPLAYABLE = "unreplayable"
    TOMBSTONE = "tombstone"

    def __str__(self) -> str:
        return self.value

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is Python code and
    # the TRANSITIONS lookup runs on every store operation).
    __hash__ = object.__hash__


class Event(enum.Enum):
    """What can happen to a record."""

    CLAIM = "claim"
    TAKEOVER = "takeover"
    RENEW = "renew"
    COMPLETE = "complete"
    COMPLETE_UNREPLAYABLE = "complete_unreplayable"
    RELEASE = "release"
    TTL_LAPSED = "ttl_lapsed"
    RETENTION_LAPSED = "retention_lapsed"

    def __str__(self) -> str:
        return self.value

    # Members are singletons: hash by identity, in C (Enum's own __hash__ is Python code and
    # the TRANSITIONS lookup runs on every store operation).
    __hash__ = object.__hash__


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.ABSENT, Event.CLAIM): State.IN_FLIGHT,
    (State.TOMBSTONE, Event.CLAIM): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.TAKEOVER): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.RENEW): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.COMPLETE): State.COMPLETED,
    (State.IN_FLIGHT, Event.COMPLETE_UNREPLAYABLE): State.UNREPLAYABLE,
    (State.IN_FLIGHT, Event.RELEASE): State.ABSENT,
    (State.COMPLETED, Event.TTL_LAPSED): State.TOMBSTONE,
    (State.UNREPLAYABLE, Event.TTL_LAPSED): State.TOMBSTONE,
    (State.TOMBSTONE, Event.RETENTION_LAPSED): State.ABSENT,
}


def transition(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalTransition` if the table forbids it."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(state, event) from None


# Python 3.11 reads an Enum member through EnumType.__getattr__, ten times the cost of a plain
# global, and the functions below run on every store operation: they use these names. The
# states the hot transitions lead to are read from the table once, here.
_ABSENT, _IN_FLIGHT, _TOMBSTONE = State.ABSENT, State.IN_FLIGHT, State.TOMBSTONE
_ENDED = (State.COMPLETED, State.UNREPLAYABLE)  # completed either way: a TTL applies
_CLAIMED = transition(State.ABSENT, Event.CLAIM)
_COMPLETED_AS = {  # by StoredResponse.replayable
    True: transition(State.IN_FLIGHT, Event.COMPLETE),
    False: transition(State.IN_FLIGHT, Event.COMPLETE_UNREPLAYABLE),
}


Headers = tuple[tuple[str, str], ...]


# The four value types below are NamedTuples, not frozen dataclasses: every request builds
# two to four of them on the hot path, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) cost three times as much (bench/README.md). They stay
# immutable and match like dataclasses (``case Claimed(token=t)``).


class StoredResponse(NamedTuple):
    """A result kept for replay: an HTTP response, or a serialized function result.

    ``replayable=False`` marks a result that ran but could not be kept (a stream, or a body
    over the cache cap, SPEC rule 15): its status is known, its body is not.
    """

    status: int
    headers: Headers = ()
    body: bytes = b""
    replayable: bool = True
    # The first execution's trace context, so replays can link to it (SPEC rule 32).
    trace_id: str | None = None
    span_id: str | None = None


class Record(NamedTuple):
    """One stored key. Times are seconds on the store's clock (SPEC rule 14)."""

    id: str
    fingerprint: str
    state: State
    token: int
    lease_until: float = 0.0
    expires_at: float = 0.0  # completed: replay until; ignored while in flight
    retain_until: float = 0.0  # tombstone kept until (expires_at + retention)
    response: StoredResponse | None = None
    created_at: float = 0.0
    # The last recovery point an atomic handler committed (SPEC 13a); None without phases.
    # Stores that offer atomic completion fill it in; it survives takeovers and releases.
    phase: str | None = None


class Previous(NamedTuple):
    """The record a claim replaced, for telemetry (times on the store's clock, in seconds).

    For an expired key (its tombstone): ``ended_at`` is when its TTL lapsed. For a takeover
    (an in-flight claim whose holder went silent): ``ended_at`` is when its lease lapsed, and
    ``silent_for`` how long the holder had not renewed it, counting one lease of this claim's
    length before the lapse (the store keeps no renewal times). ``now`` is the claim's time.
    """

    token: int
    created_at: float
    ended_at: float
    now: float
    silent_for: float | None = None


class Claimed(NamedTuple):
    """The caller now holds the key: it must run the operation, then complete or release.

    ``token`` is the fencing token every later write must present. ``expired_before`` says the
    key had a completed record whose TTL had lapsed (outcome ``expired``); ``recovered`` says
    an earlier holder's lease lapsed and this claim took over (outcome ``recovered``);
    ``previous`` describes the record replaced in either case.
    """

    token: int
    expired_before: bool = False
    recovered: bool = False
    previous_fingerprint: str | None = None
    previous: Previous | None = None


class Existing(NamedTuple):
    """The key is held by a live record (in flight, completed or unreplayable).

    ``now`` is the store's clock when it answered (None when unknown): with the record's own
    times it tells how long the record stays live without comparing two machines' clocks
    (``stores/cached.py`` relies on it). ``cached`` is True when a process-local cache
    answered instead of the store: no store round trip was made (telemetry tells them apart).
    """

    record: Record
    now: float | None = None
    cached: bool = False


ClaimResult = Claimed | Existing

# The store operation a claim answered from a process-local cache (``Existing.cached``) is
# timed as, instead of ``"claim"``: the engine reports it, telemetry leaves it out of store
# latency (no round trip was made).
CACHE_HIT = "cache"


def next_token(previous: int | None, now: float) -> int:
    """A fencing token larger than ``previous`` and than any token minted earlier.

    Tokens are the store clock in microseconds, bumped past the previous token: they grow across
    takeovers, releases and deletions, so a holder from long ago can never match a new token.
    """
    stamp = int(now * 1_000_000)
    return stamp if previous is None or stamp > previous else previous + 1


def resolve(record: Record | None, now: float) -> State:
    """The state ``record`` is really in at store time ``now`` (lapsed TTLs applied)."""
    if record is None:
        return _ABSENT
    state = record.state
    if state is _IN_FLIGHT:  # no TTL runs while in flight (a lapsed lease is still in flight)
        return state
    if state in _ENDED and now >= record.expires_at:
        state = transition(state, Event.TTL_LAPSED)
    if state is _TOMBSTONE and now >= record.retain_until:
        state = transition(state, Event.RETENTION_LAPSED)
    return state


def visible(record: Record | None, now: float) -> Record | None:
    """``record`` as readers see it at ``now``: None once gone, a body-less tombstone after its
    TTL (SPEC 14: the tombstone keeps the fingerprint and times, never the response)."""
    state = resolve(record, now)
    if state is _ABSENT or record is None:
        return None
    if state is _TOMBSTONE and record.state is not _TOMBSTONE:
        return as_tombstone(record)
    return record


def as_tombstone(record: Record) -> Record:
    """The tombstone a completed record leaves when its TTL lapses: no response, no body."""
    return Record(
        record.id,
        record.fingerprint,
        State.TOMBSTONE,
        record.token,
        record.lease_until,
        record.expires_at,
        record.retain_until,
        None,
        record.created_at,
    )


def lease_left(record: Record | None, now: float) -> float:
    """Seconds until an in-flight claim may be taken over; 0 when it is not live in flight.

    A waiter (``watch``) stops at 0: a completed or released record can be replayed or claimed,
    and a lapsed lease can be taken over, so waiting longer would only delay the retry.
    """
    if record is None or resolve(record, now) is not _IN_FLIGHT:
        return 0.0
    return max(0.0, record.lease_until - now)


def claim_on(
    record: Record | None,
    id: str,
    fingerprint: str,
    lease: float,
    now: float,
    floor: int | None = None,
) -> tuple[ClaimResult, Record]:
    """The atomic claim step as a pure function: what ``claim`` returns and what to store.

    Stores that run Python inside their atomic section (memory, SQLite) call this; stores that
    run the logic server-side (Lua, SQL) implement the same rules and are tested against it.

    ``floor`` is the largest token the store has ever minted. A released or deleted record
    leaves no token behind, so without it a re-claim in the same clock microsecond (or after
    the clock stepped back) would mint the released holder's token again and let that stale
    holder complete the new claim (SPEC 13 fencing).
    """
    if record is None:  # a new key, the common case
        token = next_token(floor, now)
        new = Record(id, fingerprint, _CLAIMED, token, now + lease, 0.0, 0.0, None, now)
        return Claimed(token, False, False, None), new
    state = resolve(record, now)
    previous = record.token if floor is None else max(record.token, floor)
    if state is _IN_FLIGHT:
        # Only a retry of the same request may take over a lapsed lease: another request under
        # the same key is a mismatch (SPEC 9, answered 422 with the record untouched) even when
        # the holder died, or it would run in place of the work the dead holder may have done.
        if now < record.lease_until or record.fingerprint != fingerprint:
            return Existing(record, now), record
        token = next_token(previous, now)
        transition(state, Event.TAKEOVER)
        new = Record(id, fingerprint, _IN_FLIGHT, token, now + lease, 0.0, 0.0, None, now)
        lapsed = taken_over(record.token, record.created_at, record.lease_until, now, lease)
        return Claimed(token, False, True, record.fingerprint, lapsed), new
    if state in _ENDED:
        return Existing(record, now), record
    expired = state is _TOMBSTONE
    claimed = transition(state, Event.CLAIM)
    token = next_token(previous, now)
    new = Record(id, fingerprint, claimed, token, now + lease, 0.0, 0.0, None, now)
    prev_fp = record.fingerprint if expired else None
    gone = Previous(record.token, record.created_at, record.expires_at, now) if expired else None
    return Claimed(token, expired, False, prev_fp, gone), new


def taken_over(
    token: int, created_at: float, lease_until: float, now: float, lease: float
) -> Previous:
    """The :class:`Previous` of a lapsed claim taken over at ``now`` by a claim of ``lease``."""
    return Previous(token, created_at, lease_until, now, now - lease_until + lease)


def renew_on(record: Record | None, token: int, lease: float, now: float) -> Record | None:
    """The record after a heartbeat, or None if ``token`` no longer holds it (fenced out)."""
    if not _holds(record, token, now) or record is None:
        return None
    transition(State.IN_FLIGHT, Event.RENEW)
    return Record(
        record.id,
        record.fingerprint,
        State.IN_FLIGHT,
        token,
        max(record.lease_until, now + lease),
        created_at=record.created_at,
    )


def complete_on(
    record: Record | None,
    token: int,
    response: StoredResponse,
    ttl: float,
    retention: float,
    now: float,
) -> Record | None:
    """The completed record, or None if ``token`` no longer holds it (fenced out)."""
    if not _holds(record, token, now) or record is None:
        return None
    state = _COMPLETED_AS[response.replayable]
    if not response.replayable:
        response = StoredResponse(
            response.status, (), b"", False, response.trace_id, response.span_id
        )
    # Positional: a NamedTuple built from keywords costs twice as much, on every completion.
    return Record(
        record.id,
        record.fingerprint,
        state,
        token,
        record.lease_until,
        now + ttl,  # expires_at
        now + ttl + retention,  # retain_until
        response,
        record.created_at,
    )


def release_allowed(record: Record | None, token: int, now: float) -> bool:
    """Whether ``token`` may release ``record`` (delete it so a retry runs again)."""
    if not _holds(record, token, now):
        return False
    transition(State.IN_FLIGHT, Event.RELEASE)
    return True


def held_by(record: Record | None, token: int, now: float) -> bool:
    """Whether ``token`` still holds ``record`` (a transaction re-checks it, SPEC 13a)."""
    return _holds(record, token, now)


def _holds(record: Record | None, token: int, now: float) -> bool:
    # A holder keeps the record past its lease until someone else takes it over: the lease only
    # decides whether a duplicate *may* take over, the token decides who holds it.
    return record is not None and record.token == token and resolve(record, now) is _IN_FLIGHT

"""The sans-I/O core: given what the store said, decide what to do.

No I/O, no clock, no framework, no telemetry (tests/unit/test_architecture.py checks it).
Every function takes the facts and the time as arguments and returns one value from a small
closed set, which adapters ``match`` exhaustively:

- :class:`Pass`    — not ours: hand the request to the application untouched.
- :class:`Execute` — we hold the key: run the handler, then complete or release.
- :class:`Replay`  — answer with the stored response; the handler does not run.
- :class:`Wait`    — the first attempt is in flight: wait up to ``timeout``, then claim again.
- :class:`Refuse`  — answer with a problem; the handler does not run, nothing is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from retrysafe._keys import parse_key
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy, Problem
from retrysafe._records import (
    Claimed,
    ClaimResult,
    Existing,
    Previous,
    Record,
    State,
    StoredResponse,
)
from retrysafe.errors import InvalidKey


@dataclass(frozen=True, slots=True)
class Pass:
    """The request is outside the idempotency layer (method not covered, or no key)."""


@dataclass(frozen=True, slots=True)
class Keyed:
    """The request carries a valid key; the adapter reads the body and claims next."""

    key: str


@dataclass(frozen=True, slots=True)
class Execute:
    token: int
    outcome: Outcome  # EXECUTED, EXPIRED or RECOVERED
    previous: Previous | None = None  # the record replaced (EXPIRED, RECOVERED), for telemetry


@dataclass(frozen=True, slots=True)
class Replay:
    response: StoredResponse
    record: Record
    outcome: Outcome = Outcome.REPLAYED


@dataclass(frozen=True, slots=True)
class Wait:
    timeout: float


@dataclass(frozen=True, slots=True)
class Refuse:
    problem: Problem
    detail: str
    outcome: Outcome
    retry_after: float | None = None


Admission = Pass | Keyed | Refuse
Decision = Execute | Replay | Wait | Refuse


def admit(
    method: str,
    path: str,
    header_values: Sequence[Sequence[str]],
    policy: Policy,
    body_key: str | None = None,
) -> Admission:
    """First look at a request, before its body is read (SPEC 2, 3, 11).

    ``header_values`` holds, for each of ``policy.header_names`` in order, every line of that
    header the request carried. ``body_key`` is the key found in the JSON body field, if the
    policy names one and the adapter looked.
    """
    if not policy.covers(method):
        return Pass()
    present = [values for values in header_values if values]
    if len(present) > 1:
        return Refuse(
            Problem.MALFORMED_KEY,
            "the request carries more than one idempotency key header "
            f"({', '.join(policy.header_names)}); send exactly one",
            Outcome.REJECTED,
        )
    try:
        key = parse_key(
            present[0] if present else (),
            min_length=policy.key_min_length,
            max_length=policy.key_max_length,
            uuid_only=policy.uuid_only,
        )
        if key is None and body_key is not None:
            key = parse_key(
                [body_key],
                min_length=policy.key_min_length,
                max_length=policy.key_max_length,
                uuid_only=policy.uuid_only,
            )
    except InvalidKey as exc:
        return Refuse(Problem.MALFORMED_KEY, exc.reason, Outcome.REJECTED)
    if key is not None:
        return Keyed(key)
    if policy.requires_key(method, path):
        return Refuse(
            Problem.MISSING_KEY,
            f"{method.upper()} {path} requires an {policy.header_names[0]} header; "
            "send a fresh UUID per operation and the same one on every retry",
            Outcome.REJECTED,
        )
    return Pass()


# Python 3.11 reads an Enum member through EnumType.__getattr__, ten times the cost of a plain
# global: the per-request functions below use these names.
_EXECUTED, _EXPIRED, _RECOVERED = Outcome.EXECUTED, Outcome.EXPIRED, Outcome.RECOVERED
_COMPLETED, _IN_FLIGHT = State.COMPLETED, State.IN_FLIGHT


def decide(result: ClaimResult, fingerprint: str, waited: float, policy: Policy) -> Decision:
    """What to do after a claim (SPEC 7-10, 13-15).

    ``waited`` is how long this request has already waited for an in-flight first attempt.
    """
    # if/else rather than ``match``: class patterns with keywords cost a getattr and a
    # comparison per case tried, and this runs on every claim.
    if isinstance(result, Claimed):
        if result.recovered:
            return Execute(result.token, _RECOVERED, result.previous)
        if result.expired_before:
            return Execute(result.token, _EXPIRED, result.previous)
        return Execute(result.token, _EXECUTED)
    if isinstance(result, Existing):
        return _on_existing(result.record, fingerprint, waited, policy)
    raise AssertionError(f"unknown claim result {result!r}")  # pragma: no cover


def _on_existing(record: Record, fingerprint: str, waited: float, policy: Policy) -> Decision:
    if record.fingerprint != fingerprint:
        return Refuse(
            Problem.MISMATCH,
            "this idempotency key was already used with a different request (method, path, "
            "query or body); use a new key for a new operation",
            Outcome.MISMATCH,
        )
    state = record.state
    if state is _COMPLETED and record.response is not None:
        return Replay(record.response, record)
    if state is State.UNREPLAYABLE:
        return Refuse(
            Problem.UNREPLAYABLE,
            "the original request with this key was processed, but its response was "
            "streamed or too large to keep, so it cannot be replayed; it will not run again",
            Outcome.UNREPLAYABLE,
        )
    if state is _IN_FLIGHT:
        remaining = policy.wait_s - waited
        if remaining > 0:
            return Wait(remaining)
        return Refuse(
            Problem.IN_FLIGHT,
            "a request with this idempotency key is still being processed; "
            "retry after the Retry-After delay to get its result",
            Outcome.CONFLICT_IN_FLIGHT,
            retry_after=max(1.0, math.ceil(policy.in_flight_retry_after_s)),
        )
    raise AssertionError(f"a claim cannot return a {record.state} record")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Complete:
    """Store ``response`` against the key (replayable or not)."""

    response: StoredResponse


@dataclass(frozen=True, slots=True)
class Release:
    """Drop the claim so a retry runs again (5xx, "try again" statuses such as 429, exception,
    disconnect before the end)."""


Settlement = Complete | Release

# Stored headers with this prefix are retrysafe's own notes (e.g. ``retrysafe-cost``): kept with
# the record, never replayed to a client, never taken from a handler's response.
INTERNAL_PREFIX = "retrysafe-"


def settle(
    status: int | None,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
    policy: Policy,
    *,
    trace: tuple[str, str] | None = None,
    internal: Sequence[tuple[str, str]] = (),
    retry_after: bool = False,
) -> Settlement:
    """What to store once the handler is done (SPEC 8, 12, 15).

    ``status`` is None when the handler failed before a response started; ``body`` is None when
    the body was streamed or exceeded the cache cap and was not kept. ``trace`` is the first
    execution's (trace id, span id) for replays to link to (SPEC 32); ``internal`` are
    ``retrysafe-*`` headers kept with the record for telemetry (the reported cost) and never
    replayed to a client. ``retry_after`` says the response carried ``Retry-After``: a 5xx
    that asks the client to come back is released even under ``store_server_errors``.
    """
    if status is None or not policy.should_store(status, retry_after):
        return Release()
    trace_id, span_id = trace if trace is not None else (None, None)
    if body is None:
        return Complete(StoredResponse(status, (), b"", False, trace_id, span_id))
    allowed = policy.replay_headers
    kept = tuple(
        [
            (lower, value)
            for name, value in headers
            if (lower := name.lower()) in allowed and not lower.startswith(INTERNAL_PREFIX)
        ]
    )
    return Complete(StoredResponse(status, (*kept, *internal), body, True, trace_id, span_id))


def replay_headers(response: StoredResponse) -> list[tuple[str, str]]:
    """Headers of a replayed response: the stored ones plus the replay marker (SPEC 8)."""
    return [
        *(h for h in response.headers if not h[0].startswith(INTERNAL_PREFIX)),
        ("content-length", str(len(response.body))),
        ("idempotent-replayed", "true"),
    ]

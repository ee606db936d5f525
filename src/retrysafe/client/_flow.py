"""The retry decision logic, written once as a generator and driven twice (sync, async).

Like httpx's auth flow, :func:`call_flow` does no I/O: it *yields* commands — send this
request, buffer or read this response, sleep this long, park this call — and the sync and async
drivers in ``_transport.py`` carry them out and send the result back in. The generator returns the
response to give the caller, or raises the error to give the caller. Breaker, budget and clocks
are in-memory objects it may consult directly; the network, the sleeping and the DLQ's database
are the drivers' business.

A driver that stops early (the caller was cancelled, the inner transport raised something
unexpected) closes the generator; its ``finally`` hands back a breaker probe slot it held.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Literal

import httpx

from retrysafe._outcomes import Completion
from retrysafe.client._breaker import CircuitBreaker, Permit, Refusal
from retrysafe.client._budget import RetryBudget
from retrysafe.client._errors import (
    BudgetExhausted,
    CallFailed,
    CircuitOpen,
    Details,
    KeyMismatchResponse,
    RetriesExhausted,
    RetryDeferred,
)
from retrysafe.client._retry import Attempt, Failure, RetryPolicy, classify_error, problem_type
from retrysafe.client._retry import retry_after as parse_retry_after
from retrysafe.testing import testing_mode

Reason = Literal["exhausted", "circuit_open", "budget", "retry_after"]
Outcome = Literal["succeeded", "replayed", "rejected", "failed"]


@dataclass(frozen=True, slots=True)
class Send:
    request: httpx.Request
    number: int  # 1-based attempt number
    key: str | None


@dataclass(frozen=True, slots=True)
class Read:
    """Read the whole body (so it can be classified, or kept in an error); closes it."""

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Buffer:
    """Read the raw body into memory *now*, inside the retry loop (SPEC 21).

    The driver answers with an equivalent response whose body is served from memory (same
    status, headers and extensions; the bytes still content-encoded, so httpx decodes them as
    usual), or with the ``httpx.TransportError`` that cut the body off.
    """

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Park:
    """Put the call in the dead-letter queue; the driver answers with the entry id."""

    reason: Reason
    attempts: tuple[Attempt, ...]
    last_error: str
    not_before: float  # wall-clock epoch seconds


Command = Send | Buffer | Read | Sleep | Park
Reply = httpx.Response | httpx.TransportError | str | None
Flow = Generator[Command, Reply, httpx.Response]


@dataclass(frozen=True, slots=True)
class CallReport:
    """``response.extensions["retrysafe"]``: what happened to a call (SPEC 20-22, 35a).

    ``outcome`` is what the last answer was; ``completion`` what became of the operation
    over all attempts (None for a call without a key): ``ONCE`` when it ran exactly once, even
    if the answer that reached the caller was the replay of a retry.
    """

    key: str | None
    attempts: int
    replayed: bool  # the server answered from its store (``Idempotent-Replayed: true``)
    outcome: Outcome
    history: tuple[Attempt, ...] = ()
    completion: Completion | None = None

    @property
    def completed_once(self) -> bool:
        """The success SLI of a call: the operation completed exactly once."""
        return self.completion is Completion.ONCE


@dataclass(slots=True)
class Call:
    """Everything one call's flow needs to know; built by the transport."""

    request: httpx.Request
    key: str | None
    policy: RetryPolicy
    breaker: CircuitBreaker | None
    budget: RetryBudget | None
    park_on: frozenset[str]
    monotonic: Callable[[], float]
    wall: Callable[[], float]
    rng: random.Random
    # Telemetry, injected so this module stays free of OpenTelemetry: observe(event, detail)
    # with event "retry" (detail: host), "budget_refusal" (host), "parked" (reason) or
    # "completed" (the Completion's value; once per keyed call that ends with an answer or
    # an error of its own, before any park).
    observe: Callable[[str, str], None] = lambda event, detail: None
    history: tuple[Attempt, ...] = field(default=())
    # Attempts that may have run the operation but gave no answer that ends the call: a
    # timeout or a reset after the request went out, a 5xx other than 503 (SPEC 35a).
    maybe_ran: int = 0


def call_flow(call: Call) -> Flow:
    """Attempts of one call until an answer, a terminal error or a reason to stop."""
    request, policy = call.request, call.policy
    mode = testing_mode()
    attempts = min(policy.attempts, mode.attempts) if mode else policy.attempts
    safe = policy.retry_safe(request.method, call.key is not None)
    host = request.url.host
    start = call.monotonic()
    deadline = start + policy.deadline if policy.deadline is not None else math.inf
    base_timeout = dict(request.extensions.get("timeout") or {})
    if call.budget is not None:
        call.budget.deposit(host)
    number = 0
    previous: tuple[httpx.Response | None, httpx.TransportError | None] = (None, None)
    while True:
        number += 1
        permit: Permit | None = None
        if call.breaker is not None:
            verdict = call.breaker.admit(call.breaker.circuit_for(request))
            if isinstance(verdict, Refusal):
                wait = max(0.0, verdict.closes_at - call.breaker.clock())
                _completion(call, None)
                parked = yield from _park(call, "circuit_open", "circuit open", wait)
                raise CircuitOpen(
                    f"circuit {verdict.circuit} is open for {wait:.1f} s more; "
                    f"not sent (key {call.key})",
                    circuit=verdict.circuit,
                    closes_at=verdict.closes_at,
                    not_before=call.wall() + wait,
                    **_details(call, *previous, parked),
                )
            permit = verdict
        if policy.attempt_header:
            request.headers[policy.attempt_header] = str(number)
        _bound_timeouts(request, base_timeout, deadline - call.monotonic())
        started, t0 = call.wall(), call.monotonic()
        try:
            reply = yield Send(request, number, call.key)
            # A body cut off mid-way is a maybe-processed failure like any other; httpx would
            # only meet it after we returned, so read small bounded bodies here first.
            if (
                safe
                and isinstance(reply, httpx.Response)
                and not _is_read(reply)  # first: cheap, and in-memory answers are read already
                and policy.buffers(request.method, reply.status_code, reply.headers)
            ):
                reply = yield Buffer(reply)
        except BaseException:
            if permit is not None and call.breaker is not None:
                call.breaker.release(permit)
            raise
        duration = call.monotonic() - t0

        # -- what came back, and may it be retried? ------------------------------------
        response: httpx.Response | None = None
        error: httpx.TransportError | None = None
        wait_floor: float | None = None
        if isinstance(reply, httpx.Response):
            response = reply
            status = response.status_code
            this = Attempt(number, started, duration, status)
            if permit is not None and call.breaker is not None:
                call.breaker.record(permit, failed=status >= 500, duration=duration)
            kind = None
            if status in (409, 422) and _is_problem(response):
                yield Read(response)
                kind = problem_type(response) if _is_read(response) else None
            if status == 422 and kind == policy.mismatch_problem:
                call.history += (this,)
                if policy.raise_on_mismatch:
                    _completion(call, "rejected")
                    raise KeyMismatchResponse(
                        f"the server refused key {call.key}: it was used before with a "
                        "different request (a client bug: use a new key per operation)",
                        key=call.key,
                        request=request,
                        response=response,
                    )
                return _answer(call, response, number, "rejected")
            in_flight = status == 409 and (
                kind == policy.in_flight_problem
                or (kind is None and call.key is not None and "retry-after" in response.headers)
            )
            # A replay is the answer the server keeps for this key: asking again only gets it
            # again (a stored 5xx or 429 under the server's opt-in), so it is final.
            replayed = response.headers.get(policy.replayed_header, "").lower() == "true"
            if replayed or not (in_flight or (status in policy.statuses and safe)):
                call.history += (this,)
                return _answer(call, response, number, _outcome(response, policy))
            wait_floor = parse_retry_after(response.headers, call.wall())
            what = f"HTTP {status}"
            # A 503 says the server did not handle the request (RFC 9110 15.6.4; retrysafe's
            # own when its store is down), nor does a 408, 425, 429 or 409 in flight.
            call.maybe_ran += status >= 500 and status != 503
        else:
            assert isinstance(reply, httpx.TransportError), reply
            error = reply
            failure = classify_error(error)
            if permit is not None and call.breaker is not None:
                if failure is Failure.FATAL:
                    call.breaker.release(permit)
                else:
                    call.breaker.record(permit, failed=True, duration=duration)
            what = f"{type(error).__name__}: {error}"
            this = Attempt(number, started, duration, None, what)
            call.maybe_ran += failure is Failure.MAYBE_PROCESSED
            if failure is Failure.FATAL or (failure is Failure.MAYBE_PROCESSED and not safe):
                call.history += (this,)
                _completion(call, None)
                raise error  # as plain httpx would have: a repeat could run the request twice

        # -- retry, or stop? -------------------------------------------------------------
        delay = max(policy.backoff(number - 1, call.rng), wait_floor or 0.0)
        if mode is not None:
            delay = 0.0
        stop: CallFailed | None = None
        if number >= attempts:
            reason: Reason = "exhausted"
            message = f"gave up after {number} attempt(s), last: {what}"
        elif wait_floor is not None and wait_floor > policy.retry_after_cap:
            reason = "retry_after"
            message = (
                f"the server asked to wait {wait_floor:.0f} s, over the "
                f"{policy.retry_after_cap:.0f} s cap"
            )
        elif call.monotonic() + delay >= deadline:
            reason = "exhausted"
            message = f"the {policy.deadline} s deadline leaves no time after {number} attempt(s)"
        elif call.budget is not None and not call.budget.withdraw(host):
            call.observe("budget_refusal", host)
            reason = "budget"
            message = f"the retry budget for {host} is spent; not retried after {what}"
        else:
            call.history += (replace(this, wait=delay),)
            previous = (response, error)
            if response is not None:
                yield Read(response)  # release the connection before the pause
            call.observe("retry", host)
            if delay > 0:
                yield Sleep(delay)
            continue

        call.history += (this,)
        if response is not None:
            yield Read(response)  # an error holds the last response, body included
        _completion(call, None)
        not_before = wait_floor if reason == "retry_after" and wait_floor else delay
        parked = yield from _park(call, reason, what, not_before)
        message += f" (key {call.key}{', parked as ' + parked if parked else ''})"
        details = _details(call, response, error, parked)
        match reason:
            case "exhausted":
                stop = RetriesExhausted(message, **details)
            case "retry_after":
                stop = RetryDeferred(message, not_before=call.wall() + not_before, **details)
            case "budget":
                stop = BudgetExhausted(message, host=host, **details)
        assert stop is not None
        raise stop


def _completion(call: Call, outcome: Outcome | None) -> Completion | None:
    """What became of a keyed call's operation (SPEC 35a); ``outcome`` None: it raised.

    A fresh success ran now; a replay ran nothing now; every earlier attempt that may have
    run counts as a run. So a timeout followed by the replay is ``ONCE``, and a timeout
    followed by a fresh success is ``DUPLICATED``: against a retrysafe server, that answer
    means the first run's record was lost (released after a 5xx, expired, taken over), or
    that the first attempt never reached it. A client cannot tell which, so it counts the
    worse case; ``retrysafe report`` on the server's audit log has the exact count per key.
    """
    if call.key is None:
        return None
    runs = call.maybe_ran + (outcome == "succeeded")
    completion = Completion.of(runs, outcome in ("succeeded", "replayed"), outcome == "rejected")
    call.observe("completed", completion.value)
    return completion


def _outcome(response: httpx.Response, policy: RetryPolicy) -> Outcome:
    status = response.status_code
    if status >= 500:
        return "failed"
    if status >= 400:
        return "rejected"
    replayed = response.headers.get(policy.replayed_header, "").lower() == "true"
    return "replayed" if replayed else "succeeded"


def _is_problem(response: httpx.Response) -> bool:
    ctype = str(response.headers.get("content-type", ""))
    return ctype.lower().startswith("application/problem+json")


def _park(
    call: Call, reason: Reason, what: str, wait: float
) -> Generator[Command, Reply, str | None]:
    if reason not in call.park_on or call.key is None:
        return None
    entry = yield Park(reason, call.history, what, call.wall() + wait)
    call.observe("parked", reason)
    return entry if isinstance(entry, str) else None


def _details(
    call: Call,
    response: httpx.Response | None,
    error: BaseException | None,
    parked: str | None,
) -> Details:
    return {
        "request": call.request,
        "key": call.key,
        "attempts": call.history,
        "last_response": response,
        "last_error": error,
        "parked": parked,
    }


def _answer(call: Call, response: httpx.Response, number: int, outcome: Outcome) -> httpx.Response:
    replayed = outcome == "replayed"
    completion = _completion(call, outcome)
    response.extensions["retrysafe"] = CallReport(
        call.key, number, replayed, outcome, call.history, completion
    )
    return response


def _is_read(response: httpx.Response) -> bool:
    try:
        response.content  # noqa: B018 - raises ResponseNotRead when the body was not read
    except httpx.ResponseNotRead:
        return False
    return True


def _bound_timeouts(request: httpx.Request, base: dict[str, float | None], left: float) -> None:
    """Never let one attempt outlive the call's deadline (SPEC 22)."""
    if math.isinf(left):
        return
    left = max(left, 0.001)
    bounded: dict[str, float] = {}
    for name in ("connect", "read", "write", "pool"):
        value = base.get(name)
        bounded[name] = left if value is None else min(value, left)
    request.extensions["timeout"] = bounded

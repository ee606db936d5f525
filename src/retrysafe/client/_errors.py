"""The client's exceptions (SPEC 26), part of the tree drawn in :mod:`retrysafe.errors`.

    RetrySafeError
    ├── CallFailed                  (also httpx.TransportError) the call did not get an answer
    │   ├── RetriesExhausted        attempts or deadline used up; holds the last response/error
    │   ├── CircuitOpen             the host's circuit is open; nothing was sent
    │   ├── BudgetExhausted         the host's retry budget refused another attempt
    │   └── RetryDeferred           the server asked to wait longer than the Retry-After cap
    ├── CredentialsMissing      a DLQ replay lacks a credential header the parked call had
    └── IdempotencyConflict
        └── KeyMismatch
            └── KeyMismatchResponse (also httpx.HTTPStatusError) the server answered 422

The ``CallFailed`` family replaces a transport failure, so it subclasses
``httpx.TransportError``: code that already catches httpx's errors keeps working. Every error
carries the idempotency key, so the caller can retry the *same* operation later, and the attempt
history. ``parked`` is the dead-letter entry id when the call was parked (SPEC 25).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NotRequired, TypedDict, Unpack

import httpx

from retrysafe.errors import KeyMismatch, RetrySafeError

if TYPE_CHECKING:
    from retrysafe.client._retry import Attempt


class Details(TypedDict):
    """What every :class:`CallFailed` carries."""

    request: httpx.Request
    key: str | None
    attempts: tuple[Attempt, ...]
    last_response: NotRequired[httpx.Response | None]
    last_error: NotRequired[BaseException | None]
    parked: NotRequired[str | None]


class CallFailed(RetrySafeError, httpx.TransportError):
    """A call that ended without a usable response; retry it later with ``key``."""

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request,
        key: str | None,
        attempts: tuple[Attempt, ...],
        last_response: httpx.Response | None = None,
        last_error: BaseException | None = None,
        parked: str | None = None,
    ) -> None:
        httpx.TransportError.__init__(self, message, request=request)
        self.key = key
        self.attempts = attempts
        self.last_response = last_response
        self.last_error = last_error
        self.parked = parked


class RetriesExhausted(CallFailed):
    """Every allowed attempt failed, or the deadline left no time for another."""


class CircuitOpen(CallFailed):
    """The circuit is open; nothing was sent, so the key is unused.

    ``closes_at`` is on the breaker's monotonic clock; ``not_before`` is the same moment as a
    wall-clock epoch time (what the DLQ stores).
    """

    def __init__(
        self,
        message: str,
        *,
        circuit: str,
        closes_at: float,
        not_before: float,
        **kw: Unpack[Details],
    ) -> None:
        super().__init__(message, **kw)
        self.circuit = circuit
        self.closes_at = closes_at
        self.not_before = not_before


class BudgetExhausted(CallFailed):
    """The retry budget of ``host`` refused a retry: the dependency is failing broadly."""

    def __init__(self, message: str, *, host: str, **kw: Unpack[Details]) -> None:
        super().__init__(message, **kw)
        self.host = host


class RetryDeferred(CallFailed):
    """The server asked for a wait above the cap; do not retry before ``not_before`` (epoch)."""

    def __init__(self, message: str, *, not_before: float, **kw: Unpack[Details]) -> None:
        super().__init__(message, **kw)
        self.not_before = not_before


class CredentialsMissing(RetrySafeError):
    """A dead-letter replay was not sent: the live client lacks credential headers the parked
    call carried (the queue keeps their names, never their values).

    Sent without them, the request would reach the server in another scope (another
    principal, or none), where its key is new: the operation would run a second time.
    ``missing`` holds the lower-case header names to supply.
    """

    def __init__(self, message: str, *, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


class KeyMismatchResponse(KeyMismatch, httpx.HTTPStatusError):
    """The server refused the key: it was used before with a different request (422).

    A client logic error — never retried (SPEC 21, 26). ``response`` is the server's problem.
    """

    def __init__(
        self, message: str, *, key: str | None, request: httpx.Request, response: httpx.Response
    ) -> None:
        httpx.HTTPStatusError.__init__(self, message, request=request, response=response)
        self.key = key

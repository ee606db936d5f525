"""The exceptions retrysafe raises, all under one root.

    RetrySafeError
    ├── ConfigurationError      a Policy, store URL or argument that cannot work (also ValueError)
    │   ├── AtomicUnsupported   atomic completion asked of a store that cannot (memory, Redis)
    │   ├── ForeignConnection   a connection given to atomic completion is not the store's
    │   └── InstanceIdentityRequired  a decorated method whose instances cannot be told apart
    ├── InvalidKey              a malformed Idempotency-Key value (also ValueError)
    ├── IllegalTransition       a record state change the state table does not allow (a bug)
    ├── SerializationError      a function result or argument the serializer cannot keep
    ├── AgentRunRequired        an agent tool called outside ``agent_run(...)``
    ├── NoAtomicContext         ``retrysafe.atomic`` used outside an atomic handler or function
    ├── StoreError              anything that went wrong talking to a store
    │   └── StoreUnavailable    the store cannot be reached or used right now (fail closed: 503)
    │       └── StoreFull       a bounded store is full of records in flight (nothing to evict)
    └── IdempotencyConflict     a duplicate that cannot be answered with a replay
        ├── KeyMismatch         same key, different request or arguments (422)
        ├── StillInFlight       the first attempt is still running after the wait bound (409)
        │   └── ClaimTakenOver  this attempt's claim was taken over; its writes were rolled back
        └── Unreplayable        the first attempt's result could not be stored (409)

The HTTP client adds, exported by ``retrysafe.client`` (they need httpx, an optional extra)::

    RetrySafeError
    ├── CallFailed              (also httpx.TransportError) no usable answer; holds key + attempts
    │   ├── RetriesExhausted    attempts or deadline used up
    │   ├── CircuitOpen         the circuit is open; nothing was sent
    │   ├── BudgetExhausted     the host's retry budget refused a retry
    │   └── RetryDeferred       the server asked to wait longer than the Retry-After cap
    └── IdempotencyConflict
        └── KeyMismatch
            └── KeyMismatchResponse  (also httpx.HTTPStatusError) the server answered 422

Backend exceptions (sqlite3, redis, psycopg) never escape a store: they are translated at the
store boundary and chained (``raise StoreUnavailable(...) from exc``).
"""

from __future__ import annotations


class RetrySafeError(Exception):
    """Root of every exception retrysafe raises on purpose."""


class ConfigurationError(RetrySafeError, ValueError):
    """A configuration value that cannot work; the message says what to change."""


class InvalidKey(RetrySafeError, ValueError):
    """An idempotency key that breaks SPEC rule 3; ``reason`` is a sentence for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IllegalTransition(RetrySafeError):
    """A record state change that the state table in ``_records.py`` forbids."""

    def __init__(self, state: object, event: object) -> None:
        super().__init__(f"no transition from {state!s} on {event!s}")
        self.state = state
        self.event = event


class SerializationError(RetrySafeError, TypeError):
    """A value the serializer cannot represent exactly (SPEC 28): a result or an argument."""


class AgentRunRequired(RetrySafeError, RuntimeError):
    """An ``@idempotent_tool`` was called outside ``agent_run``: its key would have no run id.

    Refusing is the only safe answer (SPEC 29): without the durable run id, a retried turn
    could not be told apart from a new request, so the call would be silently unprotected.
    """


class AtomicUnsupported(ConfigurationError):
    """Atomic completion (SPEC 13a) was asked of a store that cannot commit a record together
    with the application's writes: only stores that live in an SQL database (SQLite, PostgreSQL)
    can, because the record and the side effect must share one transaction."""


class ForeignConnection(ConfigurationError):
    """A connection (or engine, or session) handed to atomic completion does not reach the
    store's database, so its writes could not commit in the record's transaction (SPEC 13a)."""


class InstanceIdentityRequired(ConfigurationError):
    """An ``@idempotent``/``@idempotent_tool`` method was called on an instance that does not
    say who it is (no ``idempotency_id``): two instances' calls with equal arguments would be
    one operation, and the second would silently get the first one's result. Raised before
    anything is claimed or run; the message shows the two ways to fix it."""


class NoAtomicContext(RetrySafeError, RuntimeError):
    """``retrysafe.atomic`` was used outside an atomic handler or ``@idempotent(atomic=True)``
    function: there is no claimed record whose completion the writes could join."""


class StoreError(RetrySafeError):
    """Something went wrong in a store."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or used; callers fail closed (SPEC 17)."""


class StoreFull(StoreUnavailable):
    """A bounded store (``what``, e.g. "memory store") holds as many records as its bound
    allows and cannot evict any of them because they are in flight: a new claim is refused
    rather than evicting a claim that is still running (a 503 that says so)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class IdempotencyConflict(RetrySafeError):
    """A duplicate request or call that cannot be answered from the store."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class KeyMismatch(IdempotencyConflict):
    """The key was used before with a different request (method, path, query, body or args)."""


class StillInFlight(IdempotencyConflict):
    """The first attempt with this key is still running; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, key: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message, key=key)
        self.retry_after = retry_after


class ClaimTakenOver(StillInFlight):
    """This attempt's claim lapsed and a retry took the key over (SPEC 13, 13a).

    Raised by atomic completion when the transaction re-checks the fencing token: the
    attempt's own writes were rolled back (never committed), and the retry that holds the key
    now produces the result. Retrying after ``retry_after`` gets that result, so it is a kind of
    :class:`StillInFlight` (answered 409 with ``Retry-After`` over HTTP).
    """


class Unreplayable(IdempotencyConflict):
    """The first attempt ran, but its result could not be stored, so it cannot be replayed."""


__all__ = [
    "AgentRunRequired",
    "AtomicUnsupported",
    "ClaimTakenOver",
    "ConfigurationError",
    "ForeignConnection",
    "IdempotencyConflict",
    "IllegalTransition",
    "InstanceIdentityRequired",
    "InvalidKey",
    "KeyMismatch",
    "NoAtomicContext",
    "RetrySafeError",
    "SerializationError",
    "StillInFlight",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "Unreplayable",
]

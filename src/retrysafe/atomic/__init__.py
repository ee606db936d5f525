"""Exactly once, even under SIGKILL: the handler's writes commit with the record (SPEC 13a).

Inside a handler behind ``ASGIIdempotencyMiddleware`` or ``WSGIIdempotencyMiddleware`` with
``atomic=True``, or in an ``@idempotent(..., atomic=True)`` function::

    from retrysafe import atomic

    conn = atomic.transaction()          # the store's connection, in a transaction (lazily begun)
    conn.execute("INSERT INTO charges (order_id, cents) VALUES (?, ?)", (order, cents))
    return {"charged": cents}            # completion is written in the same transaction, one commit

Multi-step handlers record recovery points (brandur's atomic phases)::

    if not atomic.reached("ride_created"):
        atomic.transaction().execute("INSERT INTO rides ...")
        atomic.phase("ride_created")     # commits the insert with the phase name
    if not atomic.reached("charged"):
        charge = psp.charge(idempotency_key=atomic.derived_key("charge"))
        atomic.transaction().execute("UPDATE rides SET charge = ?", (charge.id,))
        atomic.phase("charged")

A takeover after a crash resumes after the last committed phase (``current_phase()`` names it),
and ``derived_key`` gives the foreign call the same key again, so the foreign service
deduplicates it. See docs/atomic.md for the guarantee and its limits.

Once the claim's lease is lost (a takeover fenced its heartbeat out, or the store could not be
reached to renew it before it ran out; see :func:`retrysafe.lease_lost`), ``transaction()``
and ``phase()`` raise :class:`~retrysafe.errors.ClaimTakenOver`: a duplicate may be running the
same work, so this attempt stops before writing more, and its uncommitted writes roll back.
"""

from __future__ import annotations

from typing import Any

from retrysafe._keys import derive_key
from retrysafe.atomic._context import current_unit, held_unit

# Part of every derived key: changing it changes every key sent downstream.
DERIVED_KEY_VERSION = "retrysafe.atomic.v1"


def transaction() -> Any:
    """The store's open transaction for this execution: a ``sqlite3.Connection`` (SQLite) or
    a ``psycopg.Connection`` (PostgreSQL).

    The first call begins it and re-checks the claim's fencing token inside it (SQLite:
    ``BEGIN IMMEDIATE``, the file's write lock, held until the handler ends or the next
    :func:`phase`; PostgreSQL: ``BEGIN`` and ``SELECT ... FOR UPDATE`` of the record row, so a
    takeover waits for us); :class:`~retrysafe.errors.ClaimTakenOver` if a retry took the key
    over meanwhile. Do not commit or roll back on it yourself: the middleware or decorator
    commits once, with the record. Blocking; async code uses :func:`atransaction`.
    """
    return held_unit().connection()


async def atransaction() -> Any:
    """:func:`transaction` for async handlers: a ``psycopg.AsyncConnection`` (PostgreSQL), or
    the ``sqlite3.Connection`` once SQLite's write lock was taken off the event loop."""
    return await held_unit().aconnection()


def phase(name: str) -> None:
    """Commit the work done so far together with the recovery point ``name``.

    A later takeover of this key (after a crash) sees ``name`` in :func:`current_phase` and
    :func:`reached`; the next :func:`transaction` begins a new transaction.
    """
    held_unit().mark(name)


async def aphase(name: str) -> None:
    """:func:`phase` for async handlers."""
    await held_unit().amark(name)


def current_phase() -> str | None:
    """The last recovery point committed for this key (by this attempt or a crashed earlier
    one), or None when there is none: a takeover resumes after it."""
    phases = current_unit().phases
    return phases[-1] if phases else None


def reached(name: str) -> bool:
    """Whether recovery point ``name`` was committed for this key: skip the work it covers."""
    return name in current_unit().phases


def derived_key(name: str) -> str:
    """A key for a foreign call made in phase ``name``, derived from the record's identity.

    Every attempt at this key (a takeover after a crash included) derives the same value, so
    a foreign call repeated by a resumed phase is deduplicated by the foreign service.
    """
    return derive_key(DERIVED_KEY_VERSION, current_unit().id, name)


__all__ = [
    "aphase",
    "atransaction",
    "current_phase",
    "derived_key",
    "phase",
    "reached",
    "transaction",
]

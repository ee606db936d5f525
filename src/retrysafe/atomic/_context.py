"""The atomic unit of the execution in progress, readable anywhere below a handler (SPEC 13a).

The adapters bind it (``retrysafe._engine.bound_unit``); this is the handler's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe._engine import running_unit
from retrysafe._lease import lease_lost
from retrysafe.errors import ClaimTakenOver, NoAtomicContext
from retrysafe.stores import AtomicUnit

if TYPE_CHECKING:
    from retrysafe.stores.postgres import PostgresUnit


def current_unit() -> AtomicUnit:
    """The unit of the atomic handler or function running now; :class:`NoAtomicContext` if none."""
    unit = running_unit()
    if unit is None:
        raise NoAtomicContext(
            "no atomic idempotent execution is running here: retrysafe.atomic works inside a "
            "handler behind the ASGI or WSGI idempotency middleware with atomic=True, or in an "
            "@idempotent(..., atomic=True) function, once its key was claimed"
        )
    return unit


def held_unit() -> AtomicUnit:
    """:func:`current_unit` for work that writes: :class:`ClaimTakenOver` once the claim's
    lease is lost (a duplicate may be running the same work, so this attempt stops)."""
    unit = current_unit()
    if lease_lost():
        raise ClaimTakenOver(
            "this attempt's claim on the idempotency key was lost (taken over, or not renewed "
            "before its lease ran out): a retry may be running the same work, so nothing more "
            "is written and this attempt's uncommitted writes roll back",
            retry_after=1.0,
        )
    return unit


def postgres_unit(unit: AtomicUnit) -> PostgresUnit | None:
    """``unit`` if it is a PostgreSQL unit, else None (psycopg is imported only here: a
    SQLite-only application need not install it)."""
    try:
        from retrysafe.stores.postgres import PostgresUnit
    except ImportError:
        return None
    return unit if isinstance(unit, PostgresUnit) else None

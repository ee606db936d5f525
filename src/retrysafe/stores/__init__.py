"""Stores: where idempotency records live. ``retrysafe.open_store(url)`` picks one by URL scheme.

Each store is imported from its own module, alike whether it needs an extra or not:
``retrysafe.stores.memory.MemoryStore``, ``.sqlite.SQLiteStore``, ``.cached.CachedStore``,
``.redis.RedisStore``, ``.postgres.PostgresStore``; ``url`` holds ``open_store`` (also
``retrysafe.open_store``) and ``register_scheme``. This package exports what a store of your
own implements: the protocols, and the record values they take and return.
"""

from __future__ import annotations

from retrysafe._records import (
    Claimed,
    ClaimResult,
    Existing,
    Previous,
    Record,
    State,
    StoredResponse,
)
from retrysafe.stores._base import AsyncStore, AtomicStore, AtomicUnit, DualStore, Store
from retrysafe.stores._stats import KeyStats

__all__ = [
    "AsyncStore",
    "AtomicStore",
    "AtomicUnit",
    "ClaimResult",
    "Claimed",
    "DualStore",
    "Existing",
    "KeyStats",
    "Previous",
    "Record",
    "State",
    "Store",
    "StoredResponse",
]

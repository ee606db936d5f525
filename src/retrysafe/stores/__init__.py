"""Stores: where idempotency records live. ``retrysafe.open_store(url)`` picks one by URL scheme.

One public module per store (``memory``, ``sqlite``, ``cached``, and ``redis`` and ``postgres``,
which need their extras), and ``url`` (``open_store``, ``register_scheme``); this package
exports the stores that need no extra and what a store of your own implements: the protocols,
and the record values they take and return.
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
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore

__all__ = [
    "AsyncStore",
    "AtomicStore",
    "AtomicUnit",
    "CachedStore",
    "ClaimResult",
    "Claimed",
    "DualStore",
    "Existing",
    "KeyStats",
    "MemoryStore",
    "Previous",
    "Record",
    "SQLiteStore",
    "State",
    "Store",
    "StoredResponse",
]

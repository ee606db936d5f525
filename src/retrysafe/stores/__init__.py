"""Stores: where idempotency records live. ``retrysafe.open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

from retrysafe.stores._stats import KeyStats
from retrysafe.stores.base import AsyncStore, DualStore, Store
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore

__all__ = [
    "AsyncStore",
    "CachedStore",
    "DualStore",
    "KeyStats",
    "MemoryStore",
    "SQLiteStore",
    "Store",
]

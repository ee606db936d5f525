"""Stores: where idempotency records live. ``open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

from onceonly.stores.base import AsyncStore, DualStore, Store
from onceonly.stores.cached import CachedStore
from onceonly.stores.memory import MemoryStore
from onceonly.stores.sqlite import SQLiteStore
from onceonly.stores.url import open_store

__all__ = [
    "AsyncStore",
    "CachedStore",
    "DualStore",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "open_store",
]

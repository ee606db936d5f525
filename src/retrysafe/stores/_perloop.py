"""One asyncio client per event loop.

The Redis async channel (``_redis_wire.py``), redis.asyncio cluster clients and psycopg async
pools bind their sockets to the loop that opened them; a store object may be used from several
loops over its life (a test per loop, an app that runs ``asyncio.run`` twice), so the async
face keeps one client per running loop. A loop that is garbage-collected drops its client
with it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """Lazily make one ``T`` per running event loop with ``make`` (an async factory)."""

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        self._making: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        # The last loop asked for and its item: almost every call comes from the same loop,
        # and a WeakKeyDictionary lookup makes a weak reference each time.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def current(self) -> T | None:
        """The running loop's item if it was made already (no await: the hot path)."""
        last = self._last
        loop = asyncio.get_running_loop()
        if last is not None and last[0]() is loop:
            return last[1]
        item = self._items.get(loop)
        if item is not None:
            self._last = (weakref.ref(loop), item)
        return item

    async def get(self) -> T:
        item = self.current()
        if item is not None:
            return item
        loop = asyncio.get_running_loop()
        with self._lock:
            making = self._making.setdefault(loop, asyncio.Lock())
        async with making:  # one factory call per loop even if many tasks ask at once
            item = self._items.get(loop)
            if item is None:
                item = await self._make()
                with self._lock:
                    self._items[loop] = item
            return item

    def pop_current(self) -> T | None:
        """Forget (and return) the current loop's item, so the caller can close it."""
        with self._lock:
            self._last = None
            return self._items.pop(asyncio.get_running_loop(), None)

    def clear(self) -> list[T]:
        """Forget every item (their loops may be gone; closing them is best effort)."""
        with self._lock:
            self._last = None
            items = list(self._items.values())
            self._items.clear()
            return items

"""Wake waiters in this process when a record leaves the in-flight state.

Waiters may be threads or asyncio tasks on any event loop; a notification reaches each the
way it can be woken (``Event.set`` or ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[], None]]] = {}

    def subscribe(self, id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` on the next :meth:`notify` of ``id``; returns an unsubscribe."""
        with self._lock:
            self._waiters.setdefault(id, []).append(wake)

        def unsubscribe() -> None:
            with self._lock:
                waiters = self._waiters.get(id)
                if waiters is not None and wake in waiters:
                    waiters.remove(wake)
                    if not waiters:
                        del self._waiters[id]

        return unsubscribe

    def notify(self, id: str) -> None:
        # Nobody waits on most completions: skip the lock. A waiter subscribes before it reads
        # the record, and the record is written before this runs, so one that subscribed after
        # this check reads the new record and does not wait.
        if not self._waiters:
            return
        with self._lock:
            waiters = self._waiters.pop(id, [])
        for wake in waiters:
            wake()

    def thread_waiter(self, id: str) -> tuple[threading.Event, Callable[[], None]]:
        event = threading.Event()
        return event, self.subscribe(id, event.set)

    def task_waiter(self, id: str) -> tuple[asyncio.Event, Callable[[], None]]:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            # The waiter's loop may have closed since it subscribed; the notifier runs in the
            # completing request's thread, which must never fail because of it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

        return event, self.subscribe(id, wake)

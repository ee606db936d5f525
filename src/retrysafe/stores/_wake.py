"""Waking waiting duplicates across processes: a listener thread plus a polling fallback.

SPEC 10: a duplicate that finds its key in flight waits for the first attempt, "woken by the
store's notification mechanism where it has one, polling otherwise". The Redis and PostgreSQL
stores share this machinery:

- :class:`Listener` runs one daemon thread per store object that holds a subscription (Redis
  pub/sub, PostgreSQL LISTEN) and turns each message (a record id) into
  ``Notifier.notify(id)``. It reconnects by itself after the server comes back.
- :func:`watch_loop` / :func:`awatch_loop` wait for such a wake-up, re-checking the record
  with a growing interval meanwhile, so a lost message (listener reconnecting, server restart)
  costs at most one poll interval. Thread waiters and asyncio tasks share the one listener:
  the Notifier wakes each the way it can be woken.

Stores only publish for records that someone waits on: ``check`` marks the record as watched
in the same round trip that reads it, and completion/release publish only when marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from retrysafe.stores._notify import Notifier

log = logging.getLogger("retrysafe.stores")

POLL_START, POLL_MAX = 0.01, 0.25
_RECONNECT_START, _RECONNECT_MAX = 0.05, 2.0

# Yields record ids as messages arrive, and None at least every 0.25 s (a chance to stop).
Subscription = Callable[[], Iterator[str | None]]


class Listener:
    """A daemon thread feeding ``notifier`` from ``subscribe()``, started on first use."""

    def __init__(self, name: str, subscribe: Subscription, notifier: Notifier) -> None:
        self._name = name
        self._subscribe = subscribe
        self._notifier = notifier
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.ready = threading.Event()  # set while subscribed (tests and diagnostics)

    def ensure_started(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._pid, self._thread = os.getpid(), None
                self.ready = threading.Event()
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _run(self) -> None:
        delay = _RECONNECT_START
        while not self._stop.is_set():
            try:
                for id in self._subscribe():
                    self.ready.set()
                    delay = _RECONNECT_START
                    if self._stop.is_set():
                        return
                    if id is not None:
                        self._notifier.notify(id)
            except Exception as exc:  # any backend failure: reconnect later, waiters poll
                log.debug("%s: subscription lost (%s); reconnecting", self._name, exc)
            self.ready.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, _RECONNECT_MAX)


# ``check`` reads the record (marking it watched) and returns the seconds left on its lease
# while it is in flight, or None once it is not.
Check = Callable[[], float | None]
ACheck = Callable[[], Awaitable[float | None]]


def watch_loop(notifier: Notifier, id: str, timeout: float, check: Check) -> None:
    """Return once ``id`` is not in flight (or its lease lapsed), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = POLL_START
    event, unsubscribe = notifier.thread_waiter(id)  # subscribe before looking: no lost wake
    try:
        while True:
            lease_left = check()
            left = deadline - time.monotonic()
            if lease_left is None or lease_left <= 0 or left <= 0:
                return
            if event.wait(min(interval, left, lease_left)):
                return
            interval = min(interval * 2, POLL_MAX)
    finally:
        unsubscribe()


async def awatch_loop(notifier: Notifier, id: str, timeout: float, check: ACheck) -> None:
    """The asyncio twin of :func:`watch_loop`."""
    deadline = time.monotonic() + timeout
    interval = POLL_START
    event, unsubscribe = notifier.task_waiter(id)
    try:
        while True:
            lease_left = await check()
            left = deadline - time.monotonic()
            if lease_left is None or lease_left <= 0 or left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(interval, left, lease_left)):
                    await event.wait()
                    return
            interval = min(interval * 2, POLL_MAX)
    finally:
        unsubscribe()

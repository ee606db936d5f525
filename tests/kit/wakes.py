"""See HOW a store's ``watch`` ended, instead of timing it.

A test that asserts "woken within 0.15 s" fails on a loaded CI machine. What such a test means
is an event: the waiter was woken by the notification of the settlement, not by its polling
and not by its timeout. :func:`probe_wakes` makes that observable without touching a clock:

- polling is switched off (the poll intervals of ``stores/_wake.py`` and of the SQLite store
  become an hour), so with a far lease and a far timeout only the notification can end a wait;
- every waiter's notifier event is wrapped: :meth:`WakeProbe.wait_parked` returns once that
  many waiters block on theirs (no sleep "long enough for the watcher to start"), and
  ``woken`` counts the waits that ended because the notification set the event.

The waits the tests make are bounded by :data:`HANG`, which only catches a hang.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from retrysafe.stores import _wake, sqlite
from retrysafe.stores._notify import Notifier

HANG = 30.0  # bounds a wait that should end by an event; reaching it means a hang
NEVER = 3600.0  # a watch timeout (and poll interval) no test run reaches


class WakeProbe:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.parked = 0  # waits begun on a notifier event
        self.woken = 0  # waits that ended because the event was set (a notification)

    def _count(self, parked: int = 0, woken: int = 0) -> None:
        with self._changed:
            self.parked += parked
            self.woken += woken
            self._changed.notify_all()

    def wait_parked(self, count: int = 1) -> bool:
        """Until ``count`` waiters block on their notifier events (False after HANG)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.parked >= count, HANG)


class _ThreadEvent:
    def __init__(self, inner: threading.Event, probe: WakeProbe) -> None:
        self._inner, self._probe = inner, probe

    def is_set(self) -> bool:
        return self._inner.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self._probe._count(parked=1)
        woken = self._inner.wait(timeout)
        if woken:
            self._probe._count(woken=1)
        return woken


class _TaskEvent:
    def __init__(self, inner: asyncio.Event, probe: WakeProbe) -> None:
        self._inner, self._probe = inner, probe

    def is_set(self) -> bool:
        return self._inner.is_set()

    async def wait(self) -> bool:
        self._probe._count(parked=1)
        await self._inner.wait()  # a timeout cancels here: not counted as woken
        self._probe._count(woken=1)
        return True


def probe_wakes(monkeypatch: pytest.MonkeyPatch) -> WakeProbe:
    """Polling off, notifier events counted (for this test only: ``monkeypatch`` undoes it)."""
    probe = WakeProbe()
    for module, names in (
        (_wake, ("POLL_START", "POLL_MAX")),
        (sqlite, ("_POLL_START", "_POLL_MAX")),
    ):
        for name in names:
            monkeypatch.setattr(module, name, NEVER)
    thread_waiter: Callable[..., tuple[threading.Event, Callable[[], None]]] = (
        Notifier.thread_waiter
    )
    task_waiter: Callable[..., tuple[asyncio.Event, Callable[[], None]]] = Notifier.task_waiter

    def probed_thread_waiter(self: Notifier, id: str) -> tuple[object, Callable[[], None]]:
        event, unsubscribe = thread_waiter(self, id)
        return _ThreadEvent(event, probe), unsubscribe

    def probed_task_waiter(self: Notifier, id: str) -> tuple[object, Callable[[], None]]:
        event, unsubscribe = task_waiter(self, id)
        return _TaskEvent(event, probe), unsubscribe

    monkeypatch.setattr(Notifier, "thread_waiter", probed_thread_waiter)
    monkeypatch.setattr(Notifier, "task_waiter", probed_task_waiter)
    return probe

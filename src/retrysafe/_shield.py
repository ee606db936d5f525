"""Await a coroutine so that cancelling the caller cannot interrupt it — with no task of its
own unless the caller actually is cancelled.

``asyncio.shield(coro)`` always wraps ``coro`` in a new task: three trips round the event
loop before the caller resumes, which costs more than everything else the memory store does
for a request and about 7 µs of each Redis completion. :func:`shielded` runs the coroutine in
the caller's task instead. Whenever the coroutine waits on a future, the caller's task waits
on a stand-in that the real future wakes (in the same loop turn as it would wake the task
itself), so cancelling the caller cancels the stand-in, never the future the coroutine
needs. Only then is the coroutine handed, mid-flight, to a task of its own that runs it to
its end, while the caller gets its CancelledError at once: what ``asyncio.shield`` does,
paid for only when a cancellation happens.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

# Handed-off coroutines still running (the loop keeps only weak references to tasks).
_finishing: set[asyncio.Task[Any]] = set()


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """The result of ``coro``; once started, ``coro`` runs to its end even if we are cancelled."""
    return await _inline(coro)


def shield_awaited(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """:func:`shielded` without a coroutine of its own around ``coro``, for ``await`` only.

    What it returns is a generator-based awaitable, which ``asyncio.create_task`` refuses from
    Python 3.12 on; the engine awaits every settlement through this, on every request.
    """
    return _inline(coro)


@types.coroutine
def _inline(coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, T]:
    """Drive ``coro`` in the current task, each of its waits behind a stand-in future."""
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    while True:
        try:
            yield _stand_in(pending)
        except asyncio.CancelledError:
            _hand_off(coro, pending)  # no await since ``coro`` last yielded: nothing lost
            raise
        except BaseException as exc:  # anything else thrown into the task is for ``coro``
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                pending = coro.send(None)  # ``coro`` reads its future's result itself
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


def _stand_in(pending: Any) -> Any:
    """What the task waits on for ``coro``'s ``pending``: a future the task may cancel."""
    if not asyncio.isfuture(pending):
        return pending  # a bare yield (``asyncio.sleep(0)``): the task just comes round again
    return _StandIn(pending)


class _StandIn:
    """A future-like the task waits on in place of ``pending``: done when ``pending`` is,
    but cancelling it (the task being cancelled) leaves ``pending`` alone.

    A stand-in ``Future`` completed by a callback on ``pending`` cost every wait one more
    turn of the event loop (the callback runs one turn, the task's wake-up the next). Here
    the task's wake-up is registered on ``pending`` itself, through :meth:`_relay`, so it runs
    in the same turn as it would have for ``pending``. A task needs of what it awaits only
    ``_asyncio_future_blocking``, ``get_loop``, ``add_done_callback``, ``cancel`` and
    ``result`` (the protocol ``asyncio.Task`` follows for any future-compatible object).
    """

    __slots__ = ("_asyncio_future_blocking", "_cancelled", "_msg", "_pending", "_wake")

    def __init__(self, pending: asyncio.Future[Any]) -> None:
        self._pending = pending
        self._asyncio_future_blocking = True  # as Future.__await__ marks what it yields
        self._cancelled = False
        self._wake: tuple[Any, Any] | None = None
        self._msg: Any = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._pending.get_loop()

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self._wake = fn, context  # the task registers exactly one: its wake-up
        self._pending.add_done_callback(self._relay, context=context)

    def _relay(self, _: object) -> None:
        if not self._cancelled and self._wake is not None:
            self._wake[0](self)  # wakes the task, which reads our result(): None

    def cancel(self, msg: Any = None) -> bool:
        if self._cancelled or self._pending.done() or self._wake is None:
            return False  # the task is being woken already: it cancels itself on waking
        self._cancelled = True
        self._pending.remove_done_callback(self._relay)
        fn, context = self._wake
        self._pending.get_loop().call_soon(fn, self, context=context)
        self._msg = msg
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled or self._pending.done()

    def result(self) -> None:
        if self._cancelled:
            raise asyncio.CancelledError(*(() if self._msg is None else (self._msg,)))

    def __repr__(self) -> str:
        return f"<stand-in for {self._pending!r}>"


def _hand_off(coro: Coroutine[Any, Any, Any], pending: object) -> None:
    """Finish ``coro`` in a task of its own; its outcome is dropped, as asyncio.shield does."""
    task = asyncio.get_running_loop().create_task(_finish(coro, pending))
    _finishing.add(task)
    task.add_done_callback(_settled)


def _settled(task: asyncio.Task[Any]) -> None:
    _finishing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: nobody awaits it any more


async def _finish(coro: Coroutine[Any, Any, T], pending: object) -> T:
    return await _resume(coro, pending)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], pending: object) -> Generator[Any, Any, T]:
    """Continue a started coroutine inside the current task.

    ``pending`` is what ``coro`` last yielded (the future it waits on). We yield it to the
    task as ``coro`` would have, then pass whatever the task sends or throws back into
    ``coro`` — the same protocol ``await`` follows, resumed half-way.
    """
    while True:
        try:
            sent = yield pending
        except BaseException as exc:  # the task throws (e.g. CancelledError): forward it
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

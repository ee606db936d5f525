"""Await a coroutine so that cancelling the caller cannot interrupt it — without a task when
the coroutine finishes at once.

``asyncio.shield(coro)`` always wraps ``coro`` in a new task: three trips round the event
loop before the caller resumes, which costs more than everything else the memory store does
for a request. :func:`shielded` first runs the coroutine inline, up to its first suspension;
a coroutine that never suspends (the memory store's ``acomplete``) is done right there. One
that does suspend (a store doing I/O) is handed, mid-flight, to a task behind
``asyncio.shield``, exactly as before: cancelling the caller leaves that task running.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """The result of ``coro``; once started, ``coro`` runs to its end even if we are cancelled."""
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    # No await happened between starting ``coro`` and handing it over, so a cancellation
    # cannot fall in between.
    return await asyncio.shield(_finish(coro, pending))


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

"""The writer gate hands the lock straight to a waiter of its own process, a bounded number of
times in a row (stores/_writer_gate.py).

Without the direct handoff every grant inside a process went through the helper thread, which
must win the GIL back from a busy event loop first; under steady concurrency the queue never
emptied and each write paid that wait. The streak bound keeps other processes from starving:
after ``HANDOFF_STREAK`` handoffs the lock goes back to the kernel's queue even though waiters
of this process remain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.wakes import HANG
from retrysafe.stores._writer_gate import HANDOFF_STREAK, WriterGate

HELPER = "retrysafe-sqlite-writer-gate"  # the name of the gate's helper thread


def watch_queue(gate: WriterGate) -> Callable[[int], None]:
    """A wait for ``count`` waiters in ``gate``'s queue, notified by each join (no polling;
    HANG bounds a hang only)."""
    joined = threading.Condition()
    join = gate._join

    def counting_join(*args: Any) -> Any:
        ticket = join(*args)
        with joined:
            joined.notify_all()
        return ticket

    gate._join = counting_join  # type: ignore[method-assign]

    def queued(count: int) -> None:
        with joined:
            joined.wait_for(lambda: len(gate._queue) >= count, timeout=HANG)
        assert len(gate._queue) >= count, f"{len(gate._queue)} of {count} waiters queued"

    return queued


def test_a_release_grants_the_oldest_waiter_before_it_returns(tmp_path: Path) -> None:
    gate = WriterGate(str(tmp_path / "app.db"))
    queued = watch_queue(gate)
    first = gate.try_enter()
    assert first is not None
    granted: list[object] = []
    helpers_before = {t for t in threading.enumerate() if t.name == HELPER}
    waiter = threading.Thread(target=lambda: granted.append(gate.enter(HANG)))
    waiter.start()
    queued(1)
    (helper,) = {t for t in threading.enumerate() if t.name == HELPER} - helpers_before
    first.release()
    # Granted inside release(): the waiter's ticket left the queue with the lock, and nobody
    # else (no try_enter) can slip in before it runs.
    assert len(gate._queue) == 0
    assert gate.try_enter() is None
    waiter.join(HANG)
    assert len(granted) == 1
    granted[0].release()  # type: ignore[attr-defined]
    # Free again once the last holder let go and the helper thread that queued in the kernel
    # for the waiter (it gets the lock at this release, finds nobody left and gives it back)
    # has ended.
    helper.join(HANG)
    assert not helper.is_alive()
    again = gate.try_enter()
    assert again is not None
    again.release()


def test_the_lock_goes_back_to_the_kernel_after_a_streak_of_handoffs(tmp_path: Path) -> None:
    gate = WriterGate(str(tmp_path / "app.db"))
    waiting_at_unlock: list[int] = []
    unlock = gate._unlock

    def counting_unlock(fd: int) -> None:
        waiting_at_unlock.append(len(gate._queue))
        unlock(fd)

    gate._unlock = counting_unlock  # type: ignore[method-assign]
    queued = watch_queue(gate)
    first = gate.try_enter()
    assert first is not None
    writers = 2 * HANDOFF_STREAK + 2

    def write_once() -> None:
        gate.enter(HANG).release()

    threads = [threading.Thread(target=write_once) for _ in range(writers)]
    for thread in threads:
        thread.start()
    queued(writers)
    first.release()
    for thread in threads:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads)
    # At least once the lock was given back to the kernel with waiters of this process still
    # queued: other processes got their turn in the middle of the streak.
    assert any(waiting > 0 for waiting in waiting_at_unlock), waiting_at_unlock
    assert gate._queue == type(gate._queue)()

"""The writer gate: SQLite writers queue in the kernel instead of backing off blind.

SQLite's write lock has no queue. A connection that finds it taken sleeps in its busy handler
(1, 2, 5, 10 ... up to 100 ms between attempts) whatever the holder does, so under a steady
stream of writers - several processes, or a handler holding an atomic transaction - most of
the time goes to sleeping past the moment the lock came free, and a waiter unlucky enough to
keep missing it times out. The gate is an exclusive ``flock`` on a sidecar file beside the
database (``<db>-writer``): every writer of the store takes it before ``BEGIN IMMEDIATE`` and
gives it back after ``COMMIT``/``ROLLBACK``. A waiter blocks in the kernel, which wakes it the
moment the holder lets go; a process killed while holding it loses it with its descriptors.

SQLite's own lock stays the authority: a writer that does not use the gate (the application's
own connection, a checkpoint) still works, and a gated writer still waits for it with the
busy timeout. The gate only decides who tries next. Readers (WAL) never take it.

Inside one process the waiters - threads and asyncio tasks alike - queue in FIFO order, and
one helper thread at a time stands in the kernel's queue for them (on a descriptor of its
own, so it can wait while another descriptor of this process holds the lock); when it gets
the lock it hands it to the oldest waiter still there. So at each release the next waiter of
every process is already blocked in the kernel and they race on equal terms, and a waiter's
timeout is its own (``flock`` has none): one that gives up just leaves the queue. Async
waiters never occupy a worker thread while they wait.

A writer that lets go while waiters of its own process are queued hands the lock straight to
the oldest (no unlock), up to ``HANDOFF_STREAK`` times in a row before it unlocks and lets the
kernel's queue - other processes, and this one's helper - have a turn. Without it every
handoff inside a process went through the helper thread, which needs the GIL back from a busy
event loop (up to ``sys.getswitchinterval()``, 5 ms): under ten concurrent requests on one
loop the queue never emptied again after a checkpoint, and every write paid that wait
(bench/README.md, "SQLite: handoffs inside a process").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable


def busy() -> sqlite3.OperationalError:
    """The error SQLite's busy handler gives a writer that waited its busy timeout out: a
    waiter that times out at the gate fails exactly as it did before the gate."""
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
    exc.sqlite_errorname = "SQLITE_BUSY"
    return exc


class Hold:
    """The gate, held by one writer until :meth:`release` (which is idempotent)."""

    __slots__ = ("_fd", "_gate")

    def __init__(self, gate: WriterGate | None, fd: int) -> None:
        self._gate, self._fd = gate, fd

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self._fd)


_OPEN = Hold(None, -1)  # what a disabled gate hands out: releasing it does nothing
# Direct handoffs inside a process before the lock goes back to the kernel's queue: other
# processes get a turn at least every this many writes of one that always has a waiter.
HANDOFF_STREAK = 16


class _Ticket:
    """One waiter in the process's queue; ``wake`` runs (under the gate's mutex) once it was
    granted the lock as ``fd``, by the helper thread or straight from a release."""

    __slots__ = ("fd", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.fd: int | None = None


class WriterGate:
    """The gate of one database file, for one store object in one process."""

    def __init__(self, db_path: str) -> None:
        self._path = os.path.abspath(os.path.expanduser(db_path)) + "-writer"
        self._mutex = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        # After a fork the descriptors are the parent's open file descriptions (sharing its
        # lock) and its helper thread did not come along: start over. Closing the child's
        # copies leaves the parent's lock alone (it goes with the last descriptor).
        for fd in (*getattr(self, "_spare", ()), getattr(self, "_holding", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pid = os.getpid()
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._spare: list[int] = []  # open descriptors not holding or waiting for the lock
        self._holding: int | None = None  # the descriptor holding the lock for this process
        self._helper = False  # a helper thread stands in the kernel's queue
        self._streak = 0  # direct handoffs since the lock last went back to the kernel
        self._disabled = False

    # -- entering ------------------------------------------------------------------------

    def try_enter(self) -> Hold | None:
        """The gate if it is free right now (nobody in this process holds it or waits for
        it, and no other process holds it), else None. Never blocks."""
        with self._mutex:
            self._forked()
            if self._disabled:
                return _OPEN
            if self._holding is not None or self._queue:
                return None
            fd = self._descriptor()
            if fd is None:
                return _OPEN
            locked = self._lock(fd, blocking=False)
            if locked is None:
                return _OPEN
            if not locked:
                self._spare.append(fd)
                return None
            self._holding = fd
            return Hold(self, fd)

    def enter(self, timeout: float) -> Hold:
        """The gate, waiting at most ``timeout`` seconds (then :func:`busy` is raised)."""
        hold = self.try_enter()
        if hold is not None:
            return hold
        event = threading.Event()
        ticket = self._join(event.set)
        event.wait(timeout)
        return self._settle(ticket)

    async def aenter(self, timeout: float) -> Hold:
        """:meth:`enter` for a task: it waits on the event loop, not on a worker thread."""
        hold = self.try_enter()
        if hold is not None:
            return hold
        loop = asyncio.get_running_loop()
        granted = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: _settle tidies up
                loop.call_soon_threadsafe(_resolve, granted)

        ticket = self._join(wake)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(granted)
        except TimeoutError:
            pass
        except BaseException:  # cancelled: give back what may have been granted meanwhile
            self._settle(ticket, raise_busy=False).release()
            raise
        return self._settle(ticket)

    def _join(self, wake: Callable[[], None]) -> _Ticket:
        """Queue a waiter, with a helper thread in the kernel's queue for the process."""
        with self._mutex:
            self._forked()
            ticket = _Ticket(wake)
            self._queue.append(ticket)
            if not self._helper:
                self._helper = True
                threading.Thread(
                    target=self._stand_in_line, name="retrysafe-sqlite-writer-gate", daemon=True
                ).start()
            return ticket

    def _settle(self, ticket: _Ticket, raise_busy: bool = True) -> Hold:
        """The end of a wait: the hold if the ticket was granted (even just after its
        timeout), else the ticket leaves the queue and :func:`busy` is raised."""
        with self._mutex:
            if ticket.fd is not None:
                return Hold(self, ticket.fd)
            with contextlib.suppress(ValueError):
                self._queue.remove(ticket)
        if raise_busy:
            raise busy()
        return _OPEN

    # -- the helper thread ---------------------------------------------------------------

    def _stand_in_line(self) -> None:
        """Wait in the kernel for the lock on a descriptor of its own and hand it to the
        oldest waiter; go on while waiters remain, unlock and end when none does."""
        fd: int | None = None
        while True:
            with self._mutex:
                if fd is not None and self._queue:
                    ticket = self._queue.popleft()
                    ticket.fd, self._holding, fd = fd, fd, None
                    ticket.wake()
                if fd is not None:  # everybody gave up meanwhile
                    self._unlock(fd)
                    self._spare.append(fd)
                    fd = None
                if not self._queue or os.getpid() != self._pid:
                    self._helper = False
                    return
                fd = self._descriptor()
            if fd is None or self._lock(fd, blocking=True) is not True:
                with self._mutex:  # cannot lock at all: let everyone through ungated
                    self._disabled = True
                    for ticket in self._queue:
                        ticket.fd = -1
                        ticket.wake()
                    self._queue.clear()
                    self._helper = False
                return

    # -- releasing -------------------------------------------------------------------------

    def _release(self, fd: int) -> None:
        if fd < 0:
            return  # a disabled gate's pass
        with self._mutex:
            if os.getpid() != self._pid:
                return  # a hold from before a fork: the child's gate never knew it
            if self._holding == fd and self._queue and self._streak < HANDOFF_STREAK:
                # Straight to the oldest waiter of this process, still locked: no helper
                # thread and no GIL hand-off in between.
                self._streak += 1
                ticket = self._queue.popleft()
                ticket.fd = fd
                ticket.wake()
                return
            self._streak = 0
            self._unlock(fd)
            if self._holding == fd:
                self._holding = None
            self._spare.append(fd)

    def close(self) -> None:
        """Close the descriptors not in use (the store is closing)."""
        with self._mutex:
            spare, self._spare = self._spare, []
        for fd in spare:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- internals (under the mutex, except a blocking _lock) ---------------------------------

    def _forked(self) -> None:
        if os.getpid() != self._pid:
            self._reset()

    def _descriptor(self) -> int | None:
        if self._spare:
            return self._spare.pop()
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            # No sidecar file here (a read-only directory, say): writers wait as they did
            # before the gate, in SQLite's busy handler.
            self._disabled = True
            return None

    def _lock(self, fd: int, blocking: bool) -> bool | None:
        """True: locked; False: another descriptor holds it; None: this file system cannot
        lock (the gate then stays open for good: writers wait in SQLite's busy handler)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            self._disabled = True
            return None
        return True

    @staticmethod
    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

"""The SQLite store: the embedded default, safe across threads and OS processes.

One database file in WAL mode. Each thread (and each process) uses its own connection.
A claim is one ``BEGIN IMMEDIATE`` transaction (it takes the write lock first, so two processes
can never both read "absent" and both insert); a completion is one more. A replay skips the
write lock: completed records are immutable until their TTL, so a plain read answers it.

Async methods run a write inline on the event loop when the write lock is free (a short WAL
transaction, no fsync) and on a worker thread (``asyncio.to_thread``) when it must wait.

Completion is also expressible as statements on a caller's connection (:func:`complete_in`),
so a later layer can commit a record together with the application's own writes (SPEC 13a).

Housekeeping rides on completions, so it keeps pace with the write rate whatever it is: every
``_HOUSEKEEP_EVERY`` completions a store object purges a small batch (``_PURGE_PER_WRITE``
rows per completion, more than the one row a claim adds) and looks at the ``-wal`` file; past
``WAL_CHECKPOINT_AT`` it checkpoints it back to empty (see :meth:`SQLiteStore.bound_wal`).
After ``wal_idle`` seconds without a completion, a short-lived thread empties the WAL, so a
quiet store does not keep a burst's WAL on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from retrysafe._records import (
    Claimed,
    ClaimResult,
    Existing,
    Record,
    State,
    StoredResponse,
    claim_on,
    lease_left,
    release_allowed,
    renew_on,
    resolve,
    visible,
)
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.stores._notify import Notifier

# The atomic unit is the store's: ORM glue (retrysafe.atomic) takes it, and the check that
# a connection reaches the store's file, from here.
from retrysafe.stores._sqlite_atomic import AsyncLink, Link, SQLiteUnit, same_database
from retrysafe.stores._sqlite_sql import (
    LAST_TOKEN,
    PHASES,
    SCHEMA,
    SET_LAST_TOKEN,
    TABLE,
    UPSERT,
    complete_in,
    read_record,
    record_to_row,
    translated,
)
from retrysafe.stores._stats import KeyStats, from_rows
from retrysafe.stores._writer_gate import Hold, WriterGate

__all__ = [
    "PHASES",
    "SCHEMA",
    "TABLE",
    "WAL_CHECKPOINT_AT",
    "AsyncLink",
    "Clock",
    "Link",
    "SQLiteStore",
    "SQLiteUnit",
    "complete_in",
    "same_database",
]

Clock = Callable[[], float]
T = TypeVar("T")

_POLL_START, _POLL_MAX = 0.005, 0.1
# The event loop's connection never checkpoints (a checkpoint fsyncs); a worker thread does,
# after this many inline commits (besides the WAL bound below).
_CHECKPOINT_EVERY = 200
# Housekeeping runs every this many completions of one store object (one process's share of
# the writes), and purges up to _PURGE_PER_WRITE rows of each kind per completion: a claim
# adds at most one row, so the purge keeps up with any write rate, in batches small enough
# (64 rows, about a millisecond) that the write lock is never held for long.
_HOUSEKEEP_EVERY = 16
_PURGE_PER_WRITE = 4
# The WAL bound. SQLite's own checkpoints are PASSIVE: under concurrent writers (and readers
# on older snapshots) they never reach the end of the WAL, so it is never restarted and grows
# without end. Past WAL_CHECKPOINT_AT a store checkpoints it to the end and truncates it;
# journal_size_limit also shrinks it back whenever SQLite restarts it by itself. Together they
# keep it under 32 MiB under sustained load (docs/stores.md, tests/adversarial/test_storage.py).
WAL_CHECKPOINT_AT = 16 * 1024 * 1024
_AUTOCHECKPOINT_PAGES = 3 * WAL_CHECKPOINT_AT // 2 // 4096  # SQLite's own, a fallback
# The longest a TRUNCATE checkpoint waits for the write lock, then for readers to move to the
# newest snapshot (it holds the write lock meanwhile: writers wait at most this long).
_CHECKPOINT_WAIT = 0.1
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class _Busy(Exception):
    """The write lock is held elsewhere: an inline write must go to a worker thread."""


class _Write:
    """An async write waiting, in its loop's batch, for the writer gate (``_awrite``)."""

    __slots__ = ("after", "args", "body", "error", "future", "result")

    def __init__(
        self,
        body: Callable[..., Any],
        after: Callable[[Any, bool], Any] | None,
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
    ) -> None:
        self.body, self.after, self.args, self.future = body, after, args, future
        self.result: Any = None
        self.error: BaseException | None = None


def _fail_writes(writes: list[_Write], exc: BaseException) -> None:
    for write in writes:
        if not write.future.done():
            write.future.set_exception(
                exc if isinstance(exc, Exception) else StoreUnavailable(f"write abandoned: {exc!r}")
            )


_SPARE_MAX = 8  # idle connections kept for atomic units


class SQLiteStore:
    """A store in one SQLite file; ``clock`` is injectable for tests."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        busy_timeout: float = 5.0,
        purge_every: float | None = 60.0,
        wal_idle: float | None = 5.0,
        url: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.url = url or f"sqlite:///{self.path}"
        self._clock = clock
        self._busy_timeout = busy_timeout
        # Housekeeping rides on completions: every _HOUSEKEEP_EVERY completions a small purge
        # (sized to the completions since the last one), and at least once per
        # ``purge_every`` seconds a larger one; None: no automatic purge (``keys purge`` only).
        self._purge_every = purge_every
        self._next_purge = time.monotonic() + (purge_every or 0.0)
        self._local = threading.local()
        self._pid = os.getpid()
        self._inline_commits = 0  # since the last checkpoint
        # Per event loop, the batch of async writes now waiting for the writer gate (_awrite),
        # and the tasks that run them (kept referenced until done).
        self._gathering: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Write]] = (
            weakref.WeakKeyDictionary()
        )
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._completions = 0  # since the last housekeeping
        self._wal_path = os.path.abspath(self.path) + "-wal"
        self._checkpointing = threading.Lock()  # one checkpoint at a time from this process
        # The WAL is emptied after ``wal_idle`` seconds without a completion (None: never), by
        # a thread that lives only while writes are recent (see _idle_watch).
        self._wal_idle = wal_idle
        self._last_write = 0.0  # time.monotonic() of the latest completion
        self._idle_watcher: threading.Thread | None = None
        self._idle_stop = threading.Event()
        self._notifier = Notifier()
        self._all: list[sqlite3.Connection] = []
        self._spare: list[sqlite3.Connection] = []
        # Connections an operation or an atomic unit is using right now, and those of them
        # that close() has given up on: closing a connection while another thread runs a
        # statement on it crashes the interpreter, so the user closes it when done.
        self._busy: set[sqlite3.Connection] = set()
        self._doomed: set[sqlite3.Connection] = set()
        self._all_lock = threading.Lock()
        if self.path in ("", ":memory:"):
            raise ConfigurationError(
                "SQLiteStore needs a file path: each thread and process opens its own "
                "connection, so a private :memory: database would not be shared"
            )
        parent = Path(self.path).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigurationError(
                f"SQLite store {self.path!r}: directory {str(parent)!r} does not exist"
            )
        # Every writer of this store queues here before BEGIN IMMEDIATE (_writer_gate.py).
        self._gate = WriterGate(self.path)
        with self._using() as conn:
            conn.executescript(SCHEMA)

    # -- connections ---------------------------------------------------------------------

    def _conn(self, inline: bool = False) -> sqlite3.Connection:
        """This thread's connection; ``inline``: the event loop's own, which never waits for
        the write lock and never checkpoints (see :meth:`aclaim`)."""
        if os.getpid() != self._pid:  # forked: never share a connection with the parent
            self._local = threading.local()
            self._pid = os.getpid()
            self._all = []
            self._spare = []
            self._busy = set()
            self._doomed = set()
            # the parent's threads and locks did not come along
            self._checkpointing = threading.Lock()
            self._idle_watcher = None
            self._idle_stop = threading.Event()
        name = "inline" if inline else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = self._connect(inline)
            setattr(self._local, name, conn)
        return conn

    def _connect(self, inline: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=0.0 if inline else self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit appends to the WAL without fsync; the WAL is synced
                # at checkpoints. A power loss may drop the last commits, never corrupt the
                # file - the SQLite-recommended setting for WAL.
                conn.execute("PRAGMA synchronous=NORMAL")
                # Without it a WAL that once grew keeps its size for good, even once restarted.
                conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_AT}")
                # SQLite's own checkpoint after a commit (PASSIVE) is only a fallback: run
                # at every commit past the threshold, from every connection, it would hold the
                # checkpoint lock most of the time and the store's own (bound_wal) could not
                # get it. The event loop's connection never checkpoints (it fsyncs).
                conn.execute(f"PRAGMA wal_autocheckpoint={0 if inline else _AUTOCHECKPOINT_PAGES}")
            except sqlite3.Error:
                conn.close()  # e.g. "file is not a database": do not leak the handle
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"cannot open SQLite store {self.path!r}: {exc}; check that the path is a "
                "writable file (or can be created) and is not another kind of file"
            ) from exc
        with self._all_lock:
            self._all.append(conn)
        return conn

    def checkout(self) -> sqlite3.Connection:
        """A connection of its own for one atomic unit (SPEC 13a), from a small pool.

        Not the thread's connection: the unit's transaction may stay open across the handler,
        and the store's own operations on this thread (a nested ``@idempotent`` call) must not
        land inside it.
        """
        if os.getpid() != self._pid:
            self._conn()  # resets the per-process state after a fork
        with self._all_lock:
            conn = self._spare.pop() if self._spare else None
        if conn is None:
            conn = self._connect()
        with self._all_lock:
            self._busy.add(conn)
        return conn

    def checkin(self, conn: sqlite3.Connection) -> None:
        """Give back a connection from :meth:`checkout`; it must not be in a transaction."""
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        with self._all_lock:
            self._busy.discard(conn)
            if conn in self._doomed:
                self._doomed.discard(conn)
            elif conn in self._all and len(self._spare) < _SPARE_MAX:
                self._spare.append(conn)
                return
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextlib.contextmanager
    def _using(self, inline: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection for one operation, sqlite3 errors translated; marked busy
        so that :meth:`close` from another thread leaves it to be closed here."""
        with translated(self.path):
            conn = self._conn(inline)
            with self._all_lock:
                self._busy.add(conn)
            try:
                yield conn
            finally:
                with self._all_lock:
                    self._busy.discard(conn)
                    doomed = conn in self._doomed
                    self._doomed.discard(conn)
                if doomed:
                    conn.close()

    def unit(self, id: str, token: int, fingerprint: str, lease: float, keep: float) -> SQLiteUnit:
        """The atomic unit of the claim ``(id, token)`` (:class:`SQLiteUnit`)."""
        return SQLiteUnit(self, id, token, fingerprint, lease, keep)

    def enter_gate(self, timeout: float | None = None) -> Hold:
        """The writer gate (:mod:`retrysafe.stores._writer_gate`), taken before any
        ``BEGIN IMMEDIATE`` on this file; waits up to the busy timeout, then fails as SQLite's
        busy handler does. Release the returned hold after ``COMMIT``/``ROLLBACK``."""
        with translated(self.path):
            return self._gate.enter(self._busy_timeout if timeout is None else timeout)

    async def aenter_gate(self) -> Hold:
        """:meth:`enter_gate`, waiting on the event loop (no worker thread is held)."""
        with translated(self.path):
            return await self._gate.aenter(self._busy_timeout)

    @contextlib.contextmanager
    def _write(
        self, inline: bool = False, hold: Hold | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: the write lock is taken before anything is read.

        ``inline`` (on the event loop): raise :class:`_Busy` at once instead of waiting when
        the writer gate or the write lock is taken. ``hold``: the gate, already entered by the
        caller (who releases it); else it is entered and released here.
        """
        own = hold is None
        if hold is None:
            hold = self._gate.try_enter() if inline else self.enter_gate()
            if hold is None:
                raise _Busy
        try:
            with self._using(inline) as conn:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if inline and exc.sqlite_errorcode in _BUSY_CODES:
                        raise _Busy from exc
                    raise
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        finally:
            if own:
                hold.release()

    async def _awrite(
        self, body: Callable[..., T], after: Callable[[T, bool], T] | None, *args: Any
    ) -> T:
        """Run ``body(conn, *args)`` in a write transaction, then ``after(result, inline)``.

        When the writer gate and the lock are free it runs at once, inline, alone. When they
        are taken, it joins this loop's *batch*: the writes that find the gate taken while the
        batch waits for it. The batch enters the gate once, on the event loop, and runs them
        all in one transaction, each inside a SAVEPOINT of its own (an error rolls back only
        that write, and reaches only its caller), with one COMMIT. Before, each such write
        queued at the gate on its own, and every handoff between writers of one loop waited for
        the loop to run the next one; a batch commits them together and writes the pages they
        share (the token row, the indexes' inner pages) once. A write whose caller is cancelled
        before the batch runs is left out. If the lock itself is still taken (a writer outside
        the gate: the application's own connection, a checkpoint), the batch waits for it on a
        worker thread.
        """
        try:
            return self._written(body, after, *args, inline=True)
        except _Busy:
            pass
        loop = asyncio.get_running_loop()
        write = _Write(body, after, args, loop.create_future())
        batch = self._gathering.get(loop)
        if batch is None:
            batch = self._gathering[loop] = [write]
            task = loop.create_task(self._write_batch(loop, batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        else:
            batch.append(write)
        return cast(T, await write.future)

    def _written(
        self,
        body: Callable[..., T],
        after: Callable[[T, bool], T] | None,
        *args: Any,
        inline: bool = False,
    ) -> T:
        """``body(conn, *args)`` in a write transaction of its own, then, once committed,
        ``after(result, inline)``. ``inline``: raise :class:`_Busy` rather than wait."""
        with self._write(inline) as conn:
            result = body(conn, *args)
        return after(result, inline) if after is not None else result

    async def _write_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Write]) -> None:
        try:
            hold = await self.aenter_gate()
        except BaseException as exc:
            self._gathering.pop(loop, None)
            _fail_writes(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._gathering.pop(loop, None)  # writes arriving from now on start the next batch
        writes = [write for write in batch if not write.future.done()]
        try:
            try:
                inline = True
                self._commit_batch(writes, inline=True, hold=hold)
            except _Busy:
                inline = False
                await asyncio.to_thread(self._commit_batch, writes, hold=hold)
        except BaseException as exc:  # BEGIN or COMMIT failed: none of them happened
            _fail_writes(writes, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            hold.release()
        for write in writes:
            if write.future.done():
                continue
            if write.error is not None:
                write.future.set_exception(write.error)
                continue
            try:  # after the commit: waiters woken, counters kept
                after = write.after
                write.future.set_result(
                    after(write.result, inline) if after is not None else write.result
                )
            except Exception as exc:
                write.future.set_exception(exc)

    def _commit_batch(
        self, writes: list[_Write], inline: bool = False, hold: Hold | None = None
    ) -> None:
        with self._write(inline, hold) as conn:
            for write in writes:
                conn.execute("SAVEPOINT retrysafe_write")
                try:
                    with translated(self.path):
                        write.result = write.body(conn, *write.args)
                except Exception as exc:
                    conn.execute("ROLLBACK TO retrysafe_write")
                    write.error = exc
                conn.execute("RELEASE retrysafe_write")

    # -- sync ----------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        return self._settled(id) or self._written(self._claim_in, None, id, fingerprint, lease)

    def _settled(self, id: str) -> Existing | None:
        """Fast path for replays, without the write lock: a live completed record cannot
        change until its TTL, and a WAL reader never waits for the writer."""
        with self._using() as conn:
            current = read_record(conn, id)
        if current is None or current.state not in (State.COMPLETED, State.UNREPLAYABLE):
            return None
        now = self._clock()
        return Existing(current, now) if resolve(current, now) is current.state else None

    def _claim_in(
        self, conn: sqlite3.Connection, id: str, fingerprint: str, lease: float
    ) -> ClaimResult:
        """The claim's statements, inside a write transaction that is already open."""
        now = self._clock()
        existing = read_record(conn, id)
        row = conn.execute(LAST_TOKEN).fetchone()
        floor = int(row[0]) if row is not None else None
        result, record = claim_on(existing, id, fingerprint, lease, now, floor)
        if record is not existing:
            conn.execute(UPSERT, record_to_row(record))
        if isinstance(result, Claimed):
            conn.execute(SET_LAST_TOKEN, (result.token,))
        return result

    def renew(self, id: str, token: int, lease: float) -> bool:
        with self._write() as conn:
            record = renew_on(read_record(conn, id), token, lease, self._clock())
            if record is None:
                return False
            conn.execute(UPSERT, record_to_row(record))
            return True

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        after = functools.partial(self._completed, id)
        done: bool = self._written(self._complete_in, after, id, token, response, ttl, retention)
        if self._housekeeping_due():
            self._housekeeping()
        return done

    def _complete_in(
        self,
        conn: sqlite3.Connection,
        id: str,
        token: int,
        response: StoredResponse,
        ttl: float,
        retention: float,
    ) -> bool:
        """The completion's statements, inside a write transaction that is already open."""
        return complete_in(conn, id, token, response, ttl, retention, self._clock())

    def _completed(self, id: str, done: bool, inline: bool) -> bool:
        """After a completion's commit: the housekeeping counters, and its waiters woken."""
        if inline:
            self._inline_commits += 1
        self._completions += 1
        self._last_write = time.monotonic()
        if self._wal_idle is not None and self._idle_watcher is None:
            self._watch_idle()
        if done:
            self._notifier.notify(id)
        return done

    def _housekeeping_due(self) -> bool:
        return (
            self._completions >= _HOUSEKEEP_EVERY
            or self._inline_commits >= _CHECKPOINT_EVERY
            or (self._purge_every is not None and time.monotonic() >= self._next_purge)
        )

    def _housekeeping(self) -> None:
        """Rides on completions (see the module's docstring): a purge sized to the writes
        since the last one, a larger one at least once per ``purge_every`` seconds, the WAL
        kept under its bound, and a checkpoint of what the event loop's connection (which
        never checkpoints) wrote. It never fails the request it rides on."""
        writes, periodic = self._purge_due()
        if limit := self._purge_limit(writes, periodic):
            with contextlib.suppress(StoreUnavailable):
                self.purge(limit=limit)
        self._tend_wal()

    async def _ahousekeeping(self) -> None:
        """:meth:`_housekeeping` for the event loop. The purge is a small indexed batch, like
        a claim: it runs inline when the writer gate and the lock are free, and when they are
        not it is put off to a later completion. (On a worker thread it queued at the gate
        while it held the loop's own writers to the slow path: the SQLite first-execution
        rate end to end rose by a third without that, bench/README.md.) The WAL's bound,
        which may wait for the lock, goes to a thread only when there is work for it."""
        writes, periodic = self._purge_due()
        if limit := self._purge_limit(writes, periodic):
            try:
                with contextlib.suppress(StoreUnavailable):
                    self._purge(limit, inline=True)
            except _Busy:  # put off: the next completion tries again
                self._completions += writes
                if periodic:
                    self._next_purge = time.monotonic()
        if self._inline_commits >= _CHECKPOINT_EVERY or self.wal_size() > WAL_CHECKPOINT_AT:
            await asyncio.to_thread(self._tend_wal)

    def _purge_due(self) -> tuple[int, bool]:
        """The completions since the last purge, and whether the periodic larger purge is
        due; both are consumed (a purge put off gives them back)."""
        writes, self._completions = self._completions, 0
        periodic = self._purge_every is not None and time.monotonic() >= self._next_purge
        if periodic:
            self._next_purge = time.monotonic() + (self._purge_every or 0.0)
        return writes, periodic

    def _purge_limit(self, writes: int, periodic: bool) -> int:
        if self._purge_every is None:
            return 0
        return max(writes * _PURGE_PER_WRITE, 500 if periodic else 0)

    def _tend_wal(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            if not self.bound_wal() and self._inline_commits >= _CHECKPOINT_EVERY:
                with self._using() as conn:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if self._inline_commits >= _CHECKPOINT_EVERY:
            self._inline_commits = 0

    def _watch_idle(self) -> None:
        """Start the thread that empties the WAL once writes stop (one per store object and
        process; it ends after doing so, and the next completion starts another)."""
        with self._all_lock:
            if self._idle_watcher is not None:
                return
            watcher = self._idle_watcher = threading.Thread(
                target=self._idle_watch,
                args=(self._idle_stop,),
                name="retrysafe-sqlite-wal-idle",
                daemon=True,
            )
        watcher.start()

    def _idle_watch(self, stop: threading.Event) -> None:
        assert self._wal_idle is not None
        quiet = 0.0
        while quiet < self._wal_idle:
            if stop.wait(self._wal_idle - quiet):
                break  # closed
            quiet = time.monotonic() - self._last_write
        else:
            with contextlib.suppress(StoreUnavailable):
                conn = self.checkout()  # pooled: this thread's own connection would leak
                try:
                    self._checkpoint(conn, threshold=0)
                finally:
                    self.checkin(conn)
        with self._all_lock:
            self._idle_watcher = None

    def wal_size(self) -> int:
        """Bytes in the ``-wal`` file now (0 when there is none)."""
        try:
            return os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return 0

    def bound_wal(self, threshold: int = WAL_CHECKPOINT_AT) -> bool:
        """Checkpoint the whole WAL into the database file and empty it, when it is larger
        than ``threshold`` bytes; True if this call did.

        One ``wal_checkpoint(TRUNCATE)``: it waits (at most ``_CHECKPOINT_WAIT``) for the write
        lock, copies the WAL into the database, waits (as long again) for readers still on
        older snapshots, and truncates the file. Writers wait for it meanwhile: about 10-30 ms
        per 16 MiB on the benchmark machine (bench/README.md, "SQLite housekeeping"). Splitting
        it (a PASSIVE copy first, without the write lock) was measured worse: under many
        writers the second step waits longer for the lock, and other processes' checkpoints
        slip in between, so the WAL grew past 40 MiB. One checkpoint at a time: one thread
        per process, and SQLite's checkpoint lock makes another process's attempt return at
        once (it is busy with the same work). If it cannot finish (a long transaction holds
        the lock) it gives up and the next call tries again.
        """
        with self._using() as conn:
            return self._checkpoint(conn, threshold)

    def _checkpoint(self, conn: sqlite3.Connection, threshold: int) -> bool:
        if self.wal_size() <= threshold or not self._checkpointing.acquire(blocking=False):
            return False
        try:
            with translated(self.path):
                conn.execute(f"PRAGMA busy_timeout={int(_CHECKPOINT_WAIT * 1000)}")
                try:
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            return not busy
        finally:
            self._checkpointing.release()

    def release(self, id: str, token: int) -> bool:
        with self._write() as conn:
            if not release_allowed(read_record(conn, id), token, self._clock()):
                return False
            conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (id,))
        self._notifier.notify(id)
        return True

    def get(self, id: str) -> Record | None:
        with self._using() as conn:
            record = read_record(conn, id)
        return visible(record, self._clock())

    def watch(self, id: str, timeout: float) -> None:
        # In-process completions wake us at once; other processes are seen by polling with a
        # growing interval (SQLite has no notification channel between processes).
        deadline = time.monotonic() + timeout
        interval = _POLL_START
        event, unsubscribe = self._notifier.thread_waiter(id)
        try:
            while self._in_flight(id):
                left = deadline - time.monotonic()
                if left <= 0 or event.wait(min(interval, left)):
                    return
                interval = min(interval * 2, _POLL_MAX)
        finally:
            unsubscribe()

    def delete(self, id: str) -> bool:
        with self._write() as conn:
            # Found means "get would have returned it" (a row past retention is not purged yet).
            record = read_record(conn, id)
            conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (id,))
            conn.execute(f"DELETE FROM {PHASES} WHERE id = ?", (id,))
            found = resolve(record, self._clock()) is not State.ABSENT
        self._notifier.notify(id)
        return found

    def purge(self, limit: int = 1000) -> int:
        """Housekeeping, index-driven and bounded by ``limit`` rows per step: completed records
        past their TTL become body-less tombstones (SPEC 14), rows past their retention (and
        long-abandoned claims) are deleted. Returns how many rows were deleted."""
        return self._purge(limit)

    def _purge(self, limit: int, inline: bool = False) -> int:
        """:meth:`purge`; ``inline`` (on the event loop): :class:`_Busy` instead of waiting."""
        with self._write(inline) as conn:
            now = self._clock()
            conn.execute(
                f"UPDATE {TABLE} SET state = 'tombstone', status = NULL, headers = NULL, "
                "body = NULL, replayable = NULL, trace_id = NULL, span_id = NULL "
                f"WHERE id IN (SELECT id FROM {TABLE} WHERE expires_at <= ? "
                "AND state IN ('completed', 'unreplayable') LIMIT ?)",
                (now, limit),
            )
            cur = conn.execute(
                f"DELETE FROM {TABLE} WHERE id IN "
                f"(SELECT id FROM {TABLE} WHERE retain_until <= ? LIMIT ?)",
                (now, limit),
            )
            conn.execute(
                f"DELETE FROM {PHASES} WHERE id IN "
                f"(SELECT id FROM {PHASES} WHERE retain_until <= ? LIMIT ?)",
                (now, limit),
            )
            return cur.rowcount

    def stats(self) -> KeyStats:
        """Records per state now, lapsed TTLs applied (admin: ``retrysafe keys stats``).

        One GROUP BY over the table: a scan, which is fine for an admin command and keeps
        the request path free of an extra index to maintain.
        """
        with self._using() as conn:
            rows = conn.execute(
                "SELECT CASE WHEN state IN ('completed', 'unreplayable') AND expires_at <= ?1 "
                f"THEN 'tombstone' ELSE state END AS s, count(*) FROM {TABLE} "
                "WHERE retain_until > ?1 GROUP BY s",
                (self._clock(),),
            ).fetchall()
        return from_rows(rows)

    def close(self) -> None:
        """Close every connection not in use; one in use (an operation on another thread, an
        atomic unit's transaction) is closed by its user when done. The store stays usable:
        a later operation opens a new connection."""
        self._idle_stop.set()  # the idle watcher, if any, ends without a checkpoint
        self._idle_stop = threading.Event()  # for the next one, if the store is used again
        with self._all_lock:
            conns, self._all, self._spare = self._all, [], []
            idle = [conn for conn in conns if conn not in self._busy]
            self._doomed.update(conn for conn in conns if conn in self._busy)
            self._local = threading.local()
        for conn in idle:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._gate.close()

    # -- async: the same operations on a worker thread ----------------------------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        # The replay read runs inline (a WAL read of one row by primary key never waits for
        # a writer); only the write transaction, which may wait for the lock, goes to a thread.
        settled = self._settled(id)
        if settled is not None:
            return settled
        # A write transaction, too, runs inline when the write lock is free: it takes tens of
        # microseconds (WAL, no fsync), a hop to a worker thread and back cost several times
        # that. When another writer holds it, wait for the writer gate on the event loop.
        return await self._awrite(self._claim_in, None, id, fingerprint, lease)

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        return await asyncio.to_thread(self.renew, id, token, lease)

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        # inline when the write lock is free, as in aclaim
        after = functools.partial(self._completed, id)
        done: bool = await self._awrite(
            self._complete_in, after, id, token, response, ttl, retention
        )
        if self._housekeeping_due():
            await self._ahousekeeping()
        return done

    async def arelease(self, id: str, token: int) -> bool:
        return await asyncio.to_thread(self.release, id, token)

    async def aget(self, id: str) -> Record | None:
        return await asyncio.to_thread(self.get, id)

    async def awatch(self, id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        interval = _POLL_START
        event, unsubscribe = self._notifier.task_waiter(id)
        try:
            while await asyncio.to_thread(self._in_flight, id):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(interval, left)):
                        await event.wait()
                        return
                interval = min(interval * 2, _POLL_MAX)
        finally:
            unsubscribe()

    async def adelete(self, id: str) -> bool:
        return await asyncio.to_thread(self.delete, id)

    async def aclose(self) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _in_flight(self, id: str) -> bool:
        # A lapsed lease counts as over: the waiter goes back and takes the claim over.
        with self._using() as conn:
            record = read_record(conn, id)
        return lease_left(record, self._clock()) > 0

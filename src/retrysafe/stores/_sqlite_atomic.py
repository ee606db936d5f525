"""Atomic completion on SQLite (SPEC 13a): the handler's writes and the record commit together.

A :class:`SQLiteUnit` belongs to one claimed execution. It opens nothing until the handler asks
for the transaction; then it takes a connection of its own, runs ``BEGIN IMMEDIATE`` (SQLite's
write lock, held until commit) and re-checks the fencing token inside that transaction. The
handler writes on the connection; the adapter then completes the record with
:func:`~retrysafe.stores.sqlite.complete_in` on the same connection and commits once. A process
killed before the commit leaves neither; after it, both.

The claim itself never holds a transaction (it is the usual lease + token). While a unit's
transaction is open it holds SQLite's single write lock, so no other writer - no takeover, no
other claim - can commit in between: the token checked at ``BEGIN IMMEDIATE`` still holds at
``COMMIT``. The price is that every other writer to the file waits for the handler (up to the
store's busy timeout), which is why the transaction begins lazily. They wait in the
store's writer gate (:mod:`retrysafe.stores._writer_gate`): a unit takes it before
``BEGIN IMMEDIATE`` and gives it back at the commit or rollback, so the next writer - in any
process - starts the moment this one ends instead of at its next busy-handler retry.

Recovery points: :meth:`SQLiteUnit.mark` commits the work so far together with the name of the
phase reached (a row in ``retrysafe_records_phases``) and renews the lease. The next transaction
begins afresh and re-checks the token, since a takeover may happen between phases.

A *link* is how the unit reaches the database: its own ``sqlite3`` connection by default, or a
connection of the application's SQLAlchemy engine (:mod:`retrysafe.atomic.sqlalchemy`). An
*async link* (SQLAlchemy's aiosqlite dialect) owns a connection that lives on a thread of its
own: the unit's blocking steps run there instead of on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from retrysafe._records import StoredResponse, held_by, renew_on
from retrysafe.errors import ClaimTakenOver, ConfigurationError, ForeignConnection
from retrysafe.stores._sqlite_sql import (
    PHASES,
    UPSERT,
    complete_in,
    read_record,
    record_to_row,
    translated,
)
from retrysafe.stores._writer_gate import Hold

if TYPE_CHECKING:  # the store builds its units (SQLiteStore.unit): annotations only
    from retrysafe.stores.sqlite import SQLiteStore

_READ_PHASES = f"SELECT phases FROM {PHASES} WHERE id = ? AND fingerprint = ?"
_WRITE_PHASES = (
    f"INSERT OR REPLACE INTO {PHASES} (id, fingerprint, phases, retain_until) VALUES (?, ?, ?, ?)"
)


class Link(Protocol):
    """One database connection as the unit uses it.

    ``raw`` runs retrysafe's statements; ``handle`` is what the application writes with (the
    same ``sqlite3`` connection, or a SQLAlchemy ``Connection`` wrapping it).
    """

    @property
    def raw(self) -> sqlite3.Connection: ...
    @property
    def handle(self) -> object: ...
    def begin(self) -> None: ...
    def flush(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


L = TypeVar("L", bound=Link)
T = TypeVar("T")


@runtime_checkable
class AsyncLink(Link, Protocol):
    """A link whose ``sqlite3`` connection belongs to another thread (aiosqlite's).

    The unit calls ``raw``, ``begin``, ``commit`` and ``rollback`` only inside ``run`` (on that
    thread); ``flush`` is a no-op there, since ``aflush`` (pending ORM changes, on the event
    loop) comes first; ``aclose`` replaces ``close``.
    """

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...
    async def aflush(self) -> None: ...
    async def aclose(self) -> None: ...


class RawLink:
    """The store's own kind of connection, checked out of its pool (autocommit mode)."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._conn = store.checkout()

    @property
    def raw(self) -> sqlite3.Connection:
        return self._conn

    @property
    def handle(self) -> sqlite3.Connection:
        return self._conn

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def flush(self) -> None:
        pass  # every statement went straight to the connection

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._store.checkin(self._conn)


def same_database(conn: sqlite3.Connection, store: SQLiteStore) -> None:
    """Raise :class:`ForeignConnection` unless ``conn`` has the store's file as its main
    database: writes elsewhere could not commit in the record's transaction."""
    rows = conn.execute("PRAGMA database_list").fetchall()
    main = next((str(row[2]) for row in rows if row[1] == "main"), "")
    if not main or os.path.realpath(main) != os.path.realpath(Path(store.path).expanduser()):
        raise ForeignConnection(
            f"the connection's database is {main or 'in memory'!r}, but the idempotency store "
            f"is {store.path!r}: atomic completion needs the application's writes and the "
            "record in one database file (point both at the same file)"
        )


class SQLiteUnit:
    """One claimed execution's atomic unit of work on a :class:`SQLiteStore`.

    Sync methods block (``BEGIN IMMEDIATE`` may wait for the write lock); the ``a``-prefixed
    twins run them on a worker thread. Not shared between concurrent tasks: one per request.
    """

    def __init__(
        self,
        store: SQLiteStore,
        id: str,
        token: int,
        fingerprint: str,
        lease: float,
        keep: float,
    ) -> None:
        self.store, self.id, self.token = store, id, token
        self._fingerprint, self._lease, self._keep = fingerprint, lease, keep
        self._link: Link | None = None
        self._open = False
        self._hold: Hold | None = None  # the store's writer gate, while the transaction is open
        self._phases: tuple[str, ...] = ()
        self._lost = False

    # -- what the handler sees -----------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Whether a transaction is open (it holds the write lock, so no takeover can happen
        and a heartbeat need not - and could not - renew the lease meanwhile)."""
        return self._open

    @property
    def lost(self) -> bool:
        """Whether a re-check found the claim taken over: whatever the handler answered
        (a framework may have turned the refusal into a 500), this attempt is over."""
        return self._lost

    @property
    def phases(self) -> tuple[str, ...]:
        """Recovery points committed for this key so far, oldest first (see :meth:`load`)."""
        return self._phases

    def load(self) -> None:
        """Read the recovery points an earlier attempt committed (one primary-key read)."""
        with self.store._using() as conn:
            row = conn.execute(_READ_PHASES, (self.id, self._fingerprint)).fetchone()
        self._phases = tuple(json.loads(str(row[0]))) if row is not None else ()

    def connection(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection in the unit's transaction, begun if need be."""
        link = self.attach(RawLink, RawLink)
        handle = link.handle
        assert isinstance(handle, sqlite3.Connection)
        return handle

    def attach(self, kind: type[L], open_link: Callable[[SQLiteStore], L]) -> L:
        """The unit's link, opened with ``open_link`` the first time, in an open transaction.

        One unit has one link for its whole life: asking for a second kind of handle (raw
        ``sqlite3`` after a SQLAlchemy session, say) is a :class:`ConfigurationError`, since
        two connections could not share the transaction.
        """
        if self._link is None:
            with translated(self.store.path):
                self._link = open_link(self.store)
        link = self._kind(kind)
        if not self._open:
            self._begin()
        return link

    async def aattach(self, kind: type[L], open_link: Callable[[SQLiteStore], Awaitable[L]]) -> L:
        """:meth:`attach` for an :class:`AsyncLink`, begun on the link's own thread."""
        if self._link is None:
            with translated(self.store.path):
                self._link = await open_link(self.store)
        link = self._kind(kind)
        if not self._open:
            await self._gated(self._begin)
        return link

    def mark(self, name: str) -> None:
        """Commit the work so far with the recovery point ``name``; renew the lease too."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a phase name must be a non-empty string, not {name!r}")
        link = self._ready()
        link.flush()
        phases = (*self._phases, name)
        with translated(self.store.path):
            try:
                now = self.store._clock()
                renewed = renew_on(read_record(link.raw, self.id), self.token, self._lease, now)
                if renewed is None:  # cannot happen under the write lock; checked all the same
                    raise self._taken_over()
                link.raw.execute(UPSERT, record_to_row(renewed))
                link.raw.execute(
                    _WRITE_PHASES,
                    (self.id, self._fingerprint, json.dumps(phases), now + self._keep),
                )
                link.commit()
            except BaseException:
                self.abort()
                raise
        self._ended()
        self._phases = phases

    # -- what the adapter does at the end -------------------------------------------------

    def complete(self, response: StoredResponse, ttl: float, retention: float) -> bool:
        """Complete the record in the unit's transaction and commit it with the handler's
        writes. False (everything rolled back) if the token no longer holds the key.

        Call :meth:`flush` first: an error there is the handler's, not the store's."""
        try:
            link = self._ready()
        except ClaimTakenOver:
            return False
        with translated(self.store.path):
            try:
                now = self.store._clock()
                if not complete_in(link.raw, self.id, self.token, response, ttl, retention, now):
                    self._lost = True
                    self.abort()
                    return False
                link.commit()
            except BaseException:
                self.abort()
                raise
        self._ended()
        self.store._notifier.notify(self.id)
        return True

    def flush(self) -> None:
        """Send the handler's pending ORM changes, if its link has any (SQLAlchemy).

        Also after a phase closed the transaction: the flush begins the next one and the
        completion re-checks the claim in it (under the write lock) before committing."""
        if self._link is not None:
            self._link.flush()

    def abort(self) -> None:
        """Roll back whatever the transaction holds (the handler's writes included)."""
        if self._link is not None and self._open:
            self._open = False
            try:
                with translated(self.store.path):
                    self._link.rollback()
            finally:
                self._ungate()

    def close(self) -> None:
        """Roll back anything uncommitted and give the connection back."""
        link, self._link = self._link, None
        if link is None:
            return
        try:
            if self._open:
                self._open = False
                with translated(self.store.path):
                    link.rollback()
        finally:
            self._ungate()
            link.close()

    # -- async twins: the same steps off the event loop -------------------------------------

    async def aload(self) -> None:
        self.load()  # one WAL read by primary key never waits for a writer: inline

    async def aconnection(self) -> sqlite3.Connection:
        return await self._gated(self.connection)

    async def amark(self, name: str) -> None:
        await self.aflush()
        await self._gated(self.mark, name)

    async def acomplete(self, response: StoredResponse, ttl: float, retention: float) -> bool:
        return await self._gated(self.complete, response, ttl, retention)

    async def aflush(self) -> None:
        if isinstance(self._link, AsyncLink):
            await self._link.aflush()
        else:
            await asyncio.to_thread(self.flush)

    async def aabort(self) -> None:
        await self._off_loop(self.abort)

    async def aclose(self) -> None:
        link = self._link
        if not isinstance(link, AsyncLink):
            await asyncio.to_thread(self.close)
            return
        try:
            await link.run(self.abort)
        finally:
            self._ungate()
            self._link = None
            await link.aclose()

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking step where the link's connection lives: an async link's own thread,
        else a worker thread."""
        if isinstance(self._link, AsyncLink):
            return await self._link.run(fn, *args)
        return await asyncio.to_thread(fn, *args)

    # -- internals -----------------------------------------------------------------------

    def _kind(self, kind: type[L]) -> L:
        """The open link, if it is a ``kind``; else the handler mixed two kinds of handle."""
        if not isinstance(self._link, kind):
            raise ConfigurationError(
                f"this handler's atomic transaction is already open through "
                f"{type(self._link).__name__}; use that one handle (not {kind.__name__}) for "
                "every write, so they commit together"
            )
        return self._link

    def _ready(self) -> Link:
        """The link, in a transaction that holds the write lock and the claim."""
        if self._open and self._link is not None and not self._link.raw.in_transaction:
            self._ended()  # the application rolled back itself: begin (and check) again
        if not self._open:
            kind = type(self._link) if self._link is not None else RawLink
            self.attach(kind, RawLink)  # an existing link is reused; RawLink only opens one
        assert self._link is not None
        return self._link

    async def _gated(self, step: Callable[..., T], *args: Any) -> T:
        """Run a blocking step off the loop, having entered the writer gate on the event loop
        first if the step may begin the transaction: no worker thread blocks waiting for it
        (:meth:`_begin` finds it held). Given back if the step left no transaction open."""
        if not self._open and self._hold is None:
            self._hold = await self.store.aenter_gate()
        try:
            return await self._off_loop(step, *args)
        finally:
            if not self._open:
                self._ungate()

    def _ended(self) -> None:
        """The transaction is over (committed or rolled back): let the next writer in."""
        self._open = False
        self._ungate()

    def _ungate(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    def _begin(self) -> None:
        link = self._link
        assert link is not None
        if self._hold is None:
            self._hold = self.store.enter_gate()
        with translated(self.store.path):
            try:
                link.begin()
            except BaseException:
                self._ungate()
                raise
            self._open = True
            try:
                record = read_record(link.raw, self.id)
                holds = held_by(record, self.token, self.store._clock())
            except BaseException:
                self.abort()
                raise
        if not holds:
            self.abort()
            raise self._taken_over()

    def _taken_over(self) -> ClaimTakenOver:
        self._lost = True
        return ClaimTakenOver(
            "this attempt's claim lapsed and another attempt took the key over; nothing this "
            "attempt wrote in the atomic transaction was committed - retry to get the result",
            retry_after=1.0,
        )

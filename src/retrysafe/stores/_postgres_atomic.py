"""Atomic completion on PostgreSQL (SPEC 13a): the handler's writes and the record commit together.

A :class:`PostgresUnit` belongs to one claimed execution. It opens nothing until the handler
asks for the transaction; then it takes a connection from the store's pool (the sync pool, or
the event loop's async pool), runs ``BEGIN`` and re-checks the fencing token with
``SELECT ... FOR UPDATE`` on the record row. The handler writes on that connection; the adapter
then completes the record with :meth:`~retrysafe.stores.postgres.PostgresStore.complete_in` on
the same connection and commits once. A process killed before the commit leaves neither (the
server rolls back a transaction whose connection died); after it, both.

The claim itself never holds a transaction (it is the usual lease + token). The row lock taken
at ``BEGIN`` is what keeps the token valid until ``COMMIT``: a takeover is an upsert of that
row, so it waits for our commit or rollback (then sees the completed record and replays it, or
the released one and runs). Unlike SQLite, other keys and other writers are not held up: only
the one record row is locked. A takeover waits at most the store's statement timeout, then
fails closed (503), so keep atomic handlers short.

Recovery points: :meth:`PostgresUnit.mark` commits the work so far together with the name of
the phase reached (a row of the phases table) and renews the lease; the next transaction begins
afresh and re-checks the token, since a takeover may happen between phases.

A *link* lends the unit the application's own connection instead of one from the store's pool
(:mod:`retrysafe.atomic.sqlalchemy`: a SQLAlchemy connection's psycopg connection), so the
application's ORM writes and the record share one transaction and one ``COMMIT``. A link whose
sync connection belongs to one thread (Django's, :mod:`retrysafe.atomic.django`) says where
with a ``run`` method (:class:`OwnThread`): the unit's async methods run their blocking steps
there instead of on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from retrysafe._records import StoredResponse
from retrysafe.errors import ClaimTakenOver, ConfigurationError
from retrysafe.stores._postgres_sql import ABANDONED_GRACE, micros

if TYPE_CHECKING:  # the store builds its units (PostgresStore.unit): annotations only
    from retrysafe.stores.postgres import PostgresStore

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]


# Which server and database a connection reaches: two connections with the same answer share
# transactions' visibility, so the record and the application's rows can commit together.
WHERE = sql.Composed(
    [sql.SQL("SELECT current_database(), pg_postmaster_start_time()::text, inet_server_port()")]
)


def reaches_store(conn: Conn, store: PostgresStore) -> bool:
    """Whether ``conn`` reaches the store's server and database (leaves ``conn`` idle)."""
    theirs = conn.execute(WHERE.as_string(conn)).fetchone()
    conn.rollback()  # the unit begins its transaction itself
    return theirs == tuple(store._one(WHERE, {}) or ())


async def areaches_store(conn: AConn, store: PostgresStore) -> bool:
    """:func:`reaches_store` for an ``AsyncConnection``."""
    cur = await conn.execute(WHERE.as_string(conn))
    theirs = await cur.fetchone()
    await conn.rollback()
    return theirs == tuple(await store._aone(WHERE, {}) or ())


class PgLink(Protocol):
    """The application's connection lent to a unit: ``raw`` (sync) or ``araw`` (async) is the
    psycopg connection retrysafe runs its statements on; ``flush`` pushes pending ORM changes
    before the record completes; ``ended`` hears that the unit committed or rolled back the
    transaction (a framework that tracks its own transaction state settles it at ``close``);
    ``close`` gives the connection back to its owner."""

    @property
    def raw(self) -> Conn | None: ...
    @property
    def araw(self) -> AConn | None: ...
    def flush(self) -> None: ...
    def ended(self, committed: bool) -> None: ...
    def close(self) -> None: ...
    async def aflush(self) -> None: ...
    async def aclose(self) -> None: ...


L = TypeVar("L", bound=PgLink)
T = TypeVar("T")


@runtime_checkable
class OwnThread(Protocol):
    """A link whose sync connection may be used on one thread only: ``run`` runs there."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...


class PostgresUnit:
    """One claimed execution's atomic unit of work on a :class:`PostgresStore`.

    Sync methods use a connection of the store's pool, ``a``-prefixed ones one of the event
    loop's pool; the unit keeps whichever the handler opened first. Async methods on a unit
    whose handler used the sync :func:`retrysafe.atomic.transaction` run on a worker thread. Not
    shared between concurrent tasks: one per request.
    """

    def __init__(
        self,
        store: PostgresStore,
        id: str,
        token: int,
        fingerprint: str,
        lease: float,
        keep: float,
    ) -> None:
        self.store, self.id, self.token = store, id, token
        self._fingerprint, self._lease, self._keep = fingerprint, lease, keep
        self._conn: Conn | None = None
        self._aconn: AConn | None = None
        self._exit = contextlib.ExitStack()
        self._aexit = contextlib.AsyncExitStack()
        self._open = False
        self._phases: tuple[str, ...] = ()
        self._lost = False
        self._link: PgLink | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Whether a transaction is open. It holds the record row's lock, so a heartbeat's
        renewal (another connection) would only wait for us: the heartbeat skips it."""
        return self._open

    @property
    def lost(self) -> bool:
        """Whether a re-check found the claim taken over: this attempt is over, whatever the
        handler answered."""
        return self._lost

    @property
    def phases(self) -> tuple[str, ...]:
        """Recovery points committed for this key so far, oldest first (see :meth:`load`)."""
        return self._phases

    # -- links -------------------------------------------------------------------------------

    def _check(self, kind: type[PgLink]) -> None:
        """One unit, one connection: refuse a second kind of handle before opening anything."""
        if self._link is None and (self._conn is not None or self._aconn is not None):
            raise ConfigurationError(
                "this handler's atomic transaction is already open on a psycopg connection "
                f"(from transaction()); open the {kind.__name__} before any other write"
            )
        if self._link is not None and not isinstance(self._link, kind):
            raise ConfigurationError(
                f"this handler's atomic transaction is already open through "
                f"{type(self._link).__name__}; use that one handle (not {kind.__name__}) for "
                "every write, so they commit together"
            )

    def attach(self, kind: type[L], open_link: Callable[[PostgresStore], L]) -> L:
        """The unit's link, opened with ``open_link`` the first time, in a begun (and checked)
        transaction. One unit has one link for its whole life."""
        self._check(kind)
        if self._link is None:
            link = open_link(self.store)
            assert link.raw is not None
            self._link, self._conn = link, link.raw
            self._exit.callback(link.close)
        self.connection()
        assert isinstance(self._link, kind)
        return self._link

    async def aattach(self, kind: type[L], open_link: Callable[[PostgresStore], Awaitable[L]]) -> L:
        """:meth:`attach` for async code: an async link (``araw``), or a sync one (``raw``)
        whose blocking steps run where :meth:`_off_loop` says."""
        self._check(kind)
        if self._link is None:
            link = await open_link(self.store)
            self._link = link
            if link.araw is not None:
                self._aconn = link.araw
                self._aexit.push_async_callback(link.aclose)
            else:
                assert link.raw is not None
                self._conn = link.raw
                self._exit.callback(link.close)
        if self._conn is not None:
            await self._off_loop(self.connection)
        else:
            await self.aconnection()
        assert isinstance(self._link, kind)
        return self._link

    # -- sync --------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the recovery points an earlier attempt committed (one primary-key read)."""
        row = self.store._one(self.store.sql.phases_read, {"id": self.id, "fp": self._fingerprint})
        self._phases = _parse(row)

    def connection(self) -> Conn:
        """The ``psycopg.Connection`` in the unit's transaction, begun (and checked) if need be."""
        if self._aconn is not None:
            raise ConfigurationError(
                "this handler's atomic transaction is an AsyncConnection (from atransaction()); "
                "use that one handle for every write, so they commit together"
            )
        if self._conn is None:
            with self.store._guard():
                self._conn = self._exit.enter_context(self.store._pool.connection())
        conn = self._conn
        if self._open and conn.info.transaction_status == TransactionStatus.IDLE:
            self._open = False  # the application ended the transaction itself: begin again
        if not self._open:
            with self.store._guard():
                try:
                    self._open = True
                    with conn.pipeline():  # one round trip for both
                        if conn.autocommit:  # a lent connection begins implicitly
                            conn.execute("BEGIN")
                        cur = conn.execute(self.store.sql.hold, self._ids())
                    row = cur.fetchone()
                except BaseException:
                    self.abort()
                    raise
            if not _holds(row):
                self.abort()
                raise self._taken_over()
        return conn

    def mark(self, name: str) -> None:
        """Commit the work so far with the recovery point ``name``; renew the lease too."""
        if self._aconn is not None:
            raise ConfigurationError("an async atomic handler records phases with aphase()")
        phases = (*self._phases, _phase_name(name))
        conn = self.connection()
        try:
            self.flush()  # a link's pending ORM changes belong to this phase
        except BaseException:
            self.abort()
            raise
        with self.store._guard():
            try:
                # Under our row lock nobody can have taken the key over: renew cannot fail.
                with conn.pipeline():
                    conn.execute(self.store.sql.renew, self._renewal())
                    conn.execute(self.store.sql.phases_write, self._phases_row(phases))
                    conn.execute("COMMIT")
            except BaseException:
                self.abort()
                raise
        self._ended(True)
        self._phases = phases

    def flush(self) -> None:
        """Push a link's pending ORM changes (raw statements went straight to the server)."""
        if self._link is not None and self._conn is not None:
            self._link.flush()

    def complete(self, response: StoredResponse, ttl: float, retention: float) -> bool:
        """Complete the record in the unit's transaction and commit it with the handler's
        writes. False (everything rolled back) if the token no longer holds the key."""
        try:
            conn = self.connection()
        except ClaimTakenOver:
            return False
        try:
            if not self.store.complete_in(conn, self.id, self.token, response, ttl, retention):
                self._lost = True  # cannot happen under the row lock; checked all the same
                self.abort()
                return False
            # A completed record replays, never resumes: its recovery points go with it.
            with self.store._guard(), conn.pipeline():
                conn.execute(self.store.sql.phases_drop, {"id": self.id})
                conn.execute("COMMIT")
        except BaseException:
            self.abort()
            raise
        self._ended(True)
        self.store._notifier.notify(self.id)
        return True

    def abort(self) -> None:
        """Roll back whatever the transaction holds (the handler's writes included)."""
        if self._open and self._conn is not None:
            self._open = False
            if not self._conn.closed:  # a closed connection's transaction was rolled back
                with self.store._guard():
                    self._conn.execute("ROLLBACK")
            self._ended(False)

    def close(self) -> None:
        """Roll back anything uncommitted and give the connection back to the pool."""
        try:
            conn = self._conn
            if conn is not None and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):  # leave no transaction behind
                    conn.execute("ROLLBACK")
                self._ended(False)
        finally:
            self._open, self._conn = False, None
            self._exit.close()

    # -- async -------------------------------------------------------------------------------

    async def aload(self) -> None:
        row = await self.store._aone(
            self.store.sql.phases_read, {"id": self.id, "fp": self._fingerprint}
        )
        self._phases = _parse(row)

    async def aconnection(self) -> AConn:
        """The ``psycopg.AsyncConnection`` in the unit's transaction, begun if need be."""
        if self._conn is not None:
            raise ConfigurationError(
                "this handler's atomic transaction is a sync Connection (from transaction()); "
                "use that one handle for every write, so they commit together"
            )
        if self._aconn is None:
            pool = await self.store._apool()
            with self.store._guard():
                self._aconn = await self._aexit.enter_async_context(pool.connection())
        conn = self._aconn
        if self._open and conn.info.transaction_status == TransactionStatus.IDLE:
            self._open = False
        if not self._open:
            with self.store._guard():
                try:
                    self._open = True
                    async with conn.pipeline():
                        if conn.autocommit:
                            await conn.execute("BEGIN")
                        acur = await conn.execute(self.store.sql.hold, self._ids())
                    row = await acur.fetchone()
                except BaseException:
                    await self.aabort()
                    raise
            if not _holds(row):
                await self.aabort()
                raise self._taken_over()
        return conn

    async def amark(self, name: str) -> None:
        if self._conn is not None:
            await self._off_loop(self.mark, name)
            return
        phases = (*self._phases, _phase_name(name))
        conn = await self.aconnection()
        try:
            await self.aflush()
        except BaseException:
            await self.aabort()
            raise
        with self.store._guard():
            try:
                async with conn.pipeline():
                    await conn.execute(self.store.sql.renew, self._renewal())
                    await conn.execute(self.store.sql.phases_write, self._phases_row(phases))
                    await conn.execute("COMMIT")
            except BaseException:
                await self.aabort()
                raise
        self._ended(True)
        self._phases = phases

    async def aflush(self) -> None:
        if self._conn is not None:
            await self._off_loop(self.flush)
        elif self._link is not None and self._aconn is not None:
            await self._link.aflush()

    async def acomplete(self, response: StoredResponse, ttl: float, retention: float) -> bool:
        if self._conn is not None:
            return await self._off_loop(self.complete, response, ttl, retention)
        try:
            conn = await self.aconnection()
        except ClaimTakenOver:
            return False
        store = self.store
        try:
            if not await store.acomplete_in(conn, self.id, self.token, response, ttl, retention):
                self._lost = True
                await self.aabort()
                return False
            with store._guard():
                async with conn.pipeline():
                    await conn.execute(store.sql.phases_drop, {"id": self.id})
                    await conn.execute("COMMIT")
        except BaseException:
            await self.aabort()
            raise
        self._ended(True)
        store._notifier.notify(self.id)
        return True

    async def aabort(self) -> None:
        if self._conn is not None:
            await self._off_loop(self.abort)
        elif self._open and self._aconn is not None:
            self._open = False
            with self.store._guard():
                await self._aconn.execute("ROLLBACK")
            self._ended(False)

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._off_loop(self.close)
            return
        try:
            aconn = self._aconn
            if aconn is not None and aconn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    await aconn.execute("ROLLBACK")
                self._ended(False)
        finally:
            self._open, self._aconn = False, None
            await self._aexit.aclose()

    # -- shared by both faces ----------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking step on the sync connection: on the thread a link keeps it on, else
        on a worker thread."""
        if isinstance(self._link, OwnThread):
            return await self._link.run(fn, *args)
        return await asyncio.to_thread(fn, *args)

    def _ended(self, committed: bool) -> None:
        """The transaction is over (committed, or rolled back): tell a lent connection's owner."""
        self._open = False
        if self._link is not None:
            self._link.ended(committed)

    def _ids(self) -> dict[str, Any]:
        return {"id": self.id, "token": self.token}

    def _renewal(self) -> dict[str, Any]:
        return {**self._ids(), "lease": micros(self._lease), "grace": micros(ABANDONED_GRACE)}

    def _phases_row(self, phases: tuple[str, ...]) -> dict[str, Any]:
        return {
            "id": self.id,
            "fp": self._fingerprint,
            "phases": json.dumps(phases),
            "keep": micros(self._keep),
        }

    def _taken_over(self) -> ClaimTakenOver:
        self._lost = True
        return ClaimTakenOver(
            "this attempt's claim lapsed and another attempt took the key over; nothing this "
            "attempt wrote in the atomic transaction was committed - retry to get the result",
            retry_after=1.0,
        )


def _holds(row: tuple[Any, ...] | None) -> bool:
    """The locking read's answer: our token, still in flight (a holder keeps the key past its
    lease until someone takes it over, records.held_by)."""
    return row is not None and bool(row[0])


def _parse(row: tuple[Any, ...] | None) -> tuple[str, ...]:
    return tuple(json.loads(str(row[0]))) if row is not None else ()


def _phase_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a phase name must be a non-empty string, not {name!r}")
    return name

"""The PostgreSQL store: one table, one autocommit statement per operation.

Each operation is one statement (``_postgres_sql.py``) run in autocommit mode, so it costs one
round trip and is atomic: a replay is one round trip, a first execution two (claim,
complete). Time is the server's ``clock_timestamp()`` (SPEC 14), so application servers with
skewed clocks agree. Waiting duplicates are woken by ``LISTEN/NOTIFY`` (one channel per
table), with polling as the fallback (``_wake.py``).

Connections come from psycopg_pool pools sized by ``pool_size`` (the async face keeps one
pool per event loop); ``pool_timeout`` bounds the wait for a connection, ``connect_timeout``
each connect and ``timeout`` each statement (``statement_timeout`` on the server,
``tcp_user_timeout`` on the socket), so an outage answers StoreUnavailable (SPEC 17, a 503)
in bounded time; the pools replace broken connections, so service resumes on its own.

The schema is created explicitly and idempotently by :meth:`PostgresStore.init_schema`, and
lazily before the first operation unless ``init_schema=False``. Records past their retention
are removed by :meth:`PostgresStore.purge` (batched, index-driven; run it from cron or
pg_cron, see docs/stores.md) — never on the request path.

URL form (options in the query string, see :data:`URL_OPTIONS`; others go to libpq)::

    postgresql://user:password@host:5432/db?schema=app&table_prefix=retrysafe_&pool_size=10
    postgres://...                                      the same
    postgresql://host/db?sslmode=verify-full            TLS, as libpq spells it
"""

from __future__ import annotations

from retrysafe._extras import require

require("postgres", "the PostgreSQL store", "psycopg", "psycopg_pool")


import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from retrysafe._driver_errors import translated
from retrysafe._records import (
    Claimed,
    ClaimResult,
    Existing,
    Previous,
    Record,
    State,
    StoredResponse,
    taken_over,
)
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.stores._notify import Notifier
from retrysafe.stores._perloop import PerLoop
from retrysafe.stores._pg_apool import AsyncPool
from retrysafe.stores._pg_connect import (
    POOL_NAME_PREFIX,
    ConnectFailures,
    is_connect_failure,
    quiet_pool_warnings,
    reason,
    recording_connection,
)
from retrysafe.stores._pg_pipeline import Pipeline

# The atomic unit is the store's: ORM glue (retrysafe.atomic) takes it, and the check that
# a connection reaches the store's database, from here.
from retrysafe.stores._postgres_atomic import (
    OwnThread,
    PgLink,
    PostgresUnit,
    areaches_store,
    reaches_store,
)
from retrysafe.stores._postgres_sql import ABANDONED_GRACE, Statements, micros
from retrysafe.stores._stats import KeyStats, from_rows
from retrysafe.stores._urlopts import as_bool, redacted_url, split_options
from retrysafe.stores._wake import Listener, awatch_loop, watch_loop

__all__ = [
    "DEFAULT_URL",
    "URL_OPTIONS",
    "ClaimRaced",
    "OwnThread",
    "PgLink",
    "PostgresStore",
    "PostgresUnit",
    "Statements",
    "areaches_store",
    "libpq_options",
    "reaches_store",
    "server_name",
]

DEFAULT_URL = "postgresql://127.0.0.1:5432/postgres"
# A claim statement that raced a concurrent writer is run again; this bounds how often.
_CLAIM_ATTEMPTS = 10

URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,  # schema of the table, default: the connection's search_path
    "table_prefix": str,  # table name prefix, default "retrysafe_" (table retrysafe_records)
    "pool_size": int,  # max connections per pool, default 10
    "pool_min": int,  # connections kept open, default 1
    "pool_timeout": float,  # seconds to wait for a free connection, default = timeout
    "timeout": float,  # seconds per statement, default 2
    "connect_timeout": float,  # seconds per connect, default 2 (libpq's minimum)
    "init_schema": as_bool,  # create the table lazily on first use, default true
    "listen": as_bool,  # LISTEN/NOTIFY wake-ups for waiting duplicates, default true
    "synchronous_commit": str,  # the server setting for our statements, default: the server's
    "prepare": as_bool,  # server-side prepared statements, default true (false for PgBouncer
    # in transaction mode before 1.21)
}

_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, psycopg_pool.PoolTimeout)
Row = tuple[Any, ...]
Statement = bytes | sql.Composed  # the request path's are bytes, rendered once (see Statements)


class PostgresStore:
    """Idempotency records in one PostgreSQL table; sync and async faces in one object."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        schema: str | None = None,
        table_prefix: str = "retrysafe_",
        pool_size: int = 10,
        pool_min: int = 1,
        pool_timeout: float | None = None,
        timeout: float = 2.0,
        connect_timeout: float = 2.0,
        init_schema: bool = True,
        listen: bool = True,
        prepare: bool = True,
    ) -> None:
        clean, o = split_options(url, URL_OPTIONS)
        schema = o.get("schema", schema)
        table_prefix = o.get("table_prefix", table_prefix)
        pool_size, pool_min = o.get("pool_size", pool_size), o.get("pool_min", pool_min)
        timeout = o.get("timeout", timeout)
        pool_timeout = o.get("pool_timeout", pool_timeout)
        connect_timeout = o.get("connect_timeout", connect_timeout)
        if not 0 <= pool_min <= pool_size or pool_size < 1 or timeout <= 0:
            raise ConfigurationError(
                "PostgreSQL store: need 0 <= pool_min <= pool_size, pool_size >= 1, timeout > 0"
            )
        scheme = clean.partition("://")[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a PostgreSQL store URL: {redacted_url(url)!r}")
        self.url = url
        self.sql = Statements(schema, table_prefix)
        # LISTEN channels are identifiers (<= 63 bytes): derive a short stable one.
        digest = hashlib.sha256(f"{schema}.{self.sql.table_name}".encode()).hexdigest()[:16]
        self.channel = f"retrysafe_{digest}"
        self._conninfo = clean
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, round(connect_timeout)),
            "options": libpq_options(clean, timeout, o.get("synchronous_commit")),
            "tcp_user_timeout": round(timeout * 1000),
            # Prepare each statement on its first use on a connection: psycopg's default
            # (prepare on the 5th use) costs an extra round trip in the middle of traffic.
            "prepare_threshold": 0 if o.get("prepare", prepare) else None,
        }
        self._pool_size, self._pool_min = pool_size, pool_min
        self._pool_timeout = timeout if pool_timeout is None else pool_timeout
        self._what = f"PostgreSQL store {server_name(clean)}"
        self._lazy_init = o.get("init_schema", init_schema)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # The pool connects in the background and only logs why it could not: the connection
        # class remembers the last failure, so a PoolTimeout can name its cause (_guard).
        self._connect_failures = ConnectFailures()
        quiet_pool_warnings()
        self._pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            connection_class=recording_connection(self._connect_failures),
            min_size=pool_min,
            max_size=pool_size,
            timeout=self._pool_timeout,
            kwargs=self._connect_kwargs,
            open=False,
            name=f"{POOL_NAME_PREFIX}{self.sql.table_name}",
        )
        self._pool.open(wait=False)  # connects in the background: a down server is no error
        # Per event loop: the request path's statements, pipelined (_pg_pipeline.py), and a
        # pool of connections lent whole to atomic units (a transaction of the handler's own).
        self._async: PerLoop[Pipeline] = PerLoop(self._make_async)
        self._apools: PerLoop[AsyncPool] = PerLoop(self._make_apool)
        self._notifier = Notifier()
        self._listener = (
            Listener(f"retrysafe-pg-{self.sql.table_name}", self._subscription, self._notifier)
            if o.get("listen", listen)
            else None
        )
        self._closed = threading.Event()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    # -- schema and maintenance ----------------------------------------------------------

    def init_schema(self) -> None:
        """Create the schema, table and indexes if missing (idempotent, safe concurrently)."""
        with (
            self._guard(),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id(),))
            for statement in self.sql.create:
                conn.execute(statement)
        self._schema_ready = True

    async def ainit_schema(self) -> None:
        pool = await self._apool(init=False)
        with self._guard():
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id(),))
                for statement in self.sql.create:
                    await conn.execute(statement)
        self._schema_ready = True

    def drop_schema(self) -> None:
        """Drop the table (tests and uninstall)."""
        with self._guard(), self._pool.connection() as conn:
            conn.execute(self.sql.drop)
        self._schema_ready = False

    def purge(self, limit: int = 1000) -> int:
        """Strip bodies past their TTL and delete rows past retention, up to ``limit`` each.

        Both go through an index (never a table scan) and skip rows other sessions hold, so
        several purgers can run at once. Returns how many rows were deleted; call it until it
        returns less than ``limit`` to catch up.
        """
        self._ensure_schema()
        with self._guard(), self._pool.connection() as conn:
            conn.execute(self.sql.purge_bodies, {"limit": limit})
            conn.execute(self.sql.purge_phases, {"limit": limit})
            return conn.execute(self.sql.purge_rows, {"limit": limit}).rowcount

    def stats(self) -> KeyStats:
        """Records per state now, by the server's clock (admin: ``retrysafe keys stats``)."""
        self._ensure_schema()
        with self._guard(), self._pool.connection() as conn:
            return from_rows(conn.execute(self.sql.stats).fetchall())

    # -- sync ----------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        params = _claim_params(id, fingerprint, lease)
        for _ in range(_CLAIM_ATTEMPTS):
            row = self._one(self.sql.claim, params)
            result = _claim_result(id, fingerprint, row, lease)
            if result is not None:
                return result
        raise ClaimRaced(id)

    def renew(self, id: str, token: int, lease: float) -> bool:
        return self._one(self.sql.renew, _renew_params(id, token, lease)) is not None

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        params = _complete_params(id, token, response, ttl, retention, self.channel)
        done = self._one(self.sql.complete, params) is not None
        if done:
            self._notifier.notify(id)  # waiters in this process need not wait for NOTIFY
        return done

    def release(self, id: str, token: int) -> bool:
        params = {"id": id, "token": token, "channel": self.channel}
        done = self._one(self.sql.release, params) is not None
        if done:
            self._notifier.notify(id)
        return done

    def get(self, id: str) -> Record | None:
        row = self._one(self.sql.get, {"id": id})
        assert row is not None
        return _record(row[3], row[4:])

    def watch(self, id: str, timeout: float) -> None:
        if self._listener is not None:
            self._listener.ensure_started()
        watch_loop(self._notifier, id, timeout, lambda: _lease_left(self._one(*self._w(id))))

    def delete(self, id: str) -> bool:
        row = self._one(self.sql.delete, {"id": id, "channel": self.channel})
        self._notifier.notify(id)
        return row is not None and bool(row[0])

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()
        self._async.clear()
        self._apools.clear()

    # -- async ---------------------------------------------------------------------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        params = _claim_params(id, fingerprint, lease)
        for _ in range(_CLAIM_ATTEMPTS):
            row = await self._aone(self.sql.claim, params)
            result = _claim_result(id, fingerprint, row, lease)
            if result is not None:
                return result
        raise ClaimRaced(id)

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        return await self._aone(self.sql.renew, _renew_params(id, token, lease)) is not None

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        params = _complete_params(id, token, response, ttl, retention, self.channel)
        done = await self._aone(self.sql.complete, params) is not None
        if done:
            self._notifier.notify(id)
        return done

    async def arelease(self, id: str, token: int) -> bool:
        params = {"id": id, "token": token, "channel": self.channel}
        done = await self._aone(self.sql.release, params) is not None
        if done:
            self._notifier.notify(id)
        return done

    async def aget(self, id: str) -> Record | None:
        row = await self._aone(self.sql.get, {"id": id})
        assert row is not None
        return _record(row[3], row[4:])

    async def awatch(self, id: str, timeout: float) -> None:
        if self._listener is not None:
            self._listener.ensure_started()

        async def check() -> float | None:
            return _lease_left(await self._aone(*self._w(id)))

        await awatch_loop(self._notifier, id, timeout, check)

    async def adelete(self, id: str) -> bool:
        row = await self._aone(self.sql.delete, {"id": id, "channel": self.channel})
        self._notifier.notify(id)
        return row is not None and bool(row[0])

    async def aclose(self) -> None:
        pipeline = self._async.pop_current()
        if pipeline is not None:
            await pipeline.close()
        pool = self._apools.pop_current()
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(self.close)

    # -- atomic completion (SPEC 13a) -----------------------------------------------------

    def complete_in(
        self,
        conn: psycopg.Connection[Any],
        id: str,
        token: int,
        response: StoredResponse,
        ttl: float,
        retention: float,
    ) -> bool:
        """Complete the record with one statement on ``conn``, inside the caller's transaction.

        Does not commit: the caller's commit makes the completion and its own writes durable
        together, and a rollback undoes both (SPEC 13a). ``conn`` must reach the same database
        as the store. Returns False (writing nothing) if ``token`` is fenced out. Waiters are
        notified when the caller commits (NOTIFY is transactional).
        """
        params = _complete_params(id, token, response, ttl, retention, self.channel)
        with self._guard():
            return conn.execute(self.sql.complete, params).fetchone() is not None

    async def acomplete_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        id: str,
        token: int,
        response: StoredResponse,
        ttl: float,
        retention: float,
    ) -> bool:
        """The asyncio twin of :meth:`complete_in`."""
        params = _complete_params(id, token, response, ttl, retention, self.channel)
        with self._guard():
            cur = await conn.execute(self.sql.complete, params)
            return await cur.fetchone() is not None

    def unit(
        self, id: str, token: int, fingerprint: str, lease: float, keep: float
    ) -> PostgresUnit:
        """The atomic unit of the claim ``(id, token)`` (:class:`PostgresUnit`)."""
        return PostgresUnit(self, id, token, fingerprint, lease, keep)

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Backend errors become StoreUnavailable (chained); a missing table says what to do,
        a connection that cannot be made says why (database missing, refused, auth failed)."""
        with translated(self._what, _ERRORS):
            try:
                yield
            except psycopg_pool.PoolTimeout as exc:
                failed = self._connect_failures.last
                if failed is None:  # connected, but every connection is busy
                    raise
                raise StoreUnavailable(f"{self._what}: cannot connect: {reason(failed)}") from exc
            except psycopg.OperationalError as exc:
                if not is_connect_failure(exc):
                    raise
                raise StoreUnavailable(f"{self._what}: cannot connect: {reason(exc)}") from exc
            except psycopg.errors.UndefinedTable as exc:
                raise StoreUnavailable(
                    f"{self._what}: table {self.sql.table_name!r} does not exist; create it "
                    "with PostgresStore.init_schema() or leave init_schema enabled"
                ) from exc

    def _lock_id(self) -> int:
        return self.sql.lock_id

    def _ensure_schema(self) -> None:
        if self._schema_ready or not self._lazy_init:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.init_schema()

    def _w(self, id: str) -> tuple[Statement, Mapping[str, Any]]:
        return self.sql.watch, {"id": id}

    def _one(self, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        self._ensure_schema()
        with self._guard(), self._pool.connection() as conn:
            return conn.execute(statement, params).fetchone()

    async def _make_async(self) -> Pipeline:
        prepare = self._connect_kwargs["prepare_threshold"] is not None
        return Pipeline(self._conninfo, self._connect_kwargs, self._pool_size, prepare)

    async def _make_apool(self) -> AsyncPool:
        return AsyncPool(self._conninfo, self._connect_kwargs, self._pool_size, self._pool_timeout)

    async def _apool(self, *, init: bool = True) -> AsyncPool:
        """The loop's pool of whole connections (atomic units, schema creation)."""
        with self._guard():
            pool = await self._apools.get()
        if init and self._lazy_init and not self._schema_ready:
            await self.ainit_schema()
        return pool

    async def _apipeline(self) -> Pipeline:
        with self._guard():
            pipeline = await self._async.get()
        if self._lazy_init and not self._schema_ready:
            await self.ainit_schema()
        return pipeline

    async def _aone(self, statement: Statement, params: Mapping[str, Any]) -> Row | None:
        # The request path: every async claim, completion and replay read is one call, one
        # statement pipelined on the loop's connections (_pg_pipeline.py).
        pipeline = self._async.current()
        if pipeline is None or (self._lazy_init and not self._schema_ready):
            pipeline = await self._apipeline()
        if not isinstance(statement, bytes):  # the few not rendered once (not per request)
            statement = statement.as_bytes(None)
        with self._guard():
            return await pipeline.one(statement, params)

    def _subscription(self) -> Iterator[str | None]:
        conn = psycopg.connect(self._conninfo, **self._connect_kwargs)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            yield None
            while not self._closed.is_set():
                got = False
                for notify in conn.notifies(timeout=0.25):
                    got = True
                    yield notify.payload
                if not got:
                    yield None
        finally:
            conn.close()


class ClaimRaced(StoreUnavailable):
    """A claim kept racing concurrent writers of the same key (should never happen)."""

    def __init__(self, id: str) -> None:
        super().__init__(
            f"PostgreSQL store: claim of {id[:12]} raced concurrent writers "
            f"{_CLAIM_ATTEMPTS} times in a row"
        )


def libpq_options(conninfo: str, timeout: float, synchronous_commit: str | None) -> str:
    """libpq ``options``: the caller's own (from the URL), then our statement timeout (the
    client's PostgreSQL dead-letter queue connects with the same)."""
    given = str(psycopg.conninfo.conninfo_to_dict(conninfo).get("options") or "")
    ours = [f"-c statement_timeout={round(timeout * 1000)}"]
    if synchronous_commit:  # "off": a crash may lose the last completions, never corrupt
        ours.append(f"-c synchronous_commit={synchronous_commit}")
    return " ".join([given, *ours]).strip()


def server_name(conninfo: str) -> str:
    """``scheme://host:port/db`` of ``conninfo``: how a message names the server, with no user,
    password or options."""
    scheme, _, rest = conninfo.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


# -- rows <-> records (shared by both faces) ----------------------------------------------


def _claim_params(id: str, fingerprint: str, lease: float) -> dict[str, Any]:
    return {"id": id, "fp": fingerprint, "lease": micros(lease), "grace": micros(ABANDONED_GRACE)}


def _renew_params(id: str, token: int, lease: float) -> dict[str, Any]:
    return {"id": id, "token": token, "lease": micros(lease), "grace": micros(ABANDONED_GRACE)}


def _complete_params(
    id: str,
    token: int,
    response: StoredResponse,
    ttl: float,
    retention: float,
    channel: str,
) -> dict[str, Any]:
    replayable = response.replayable
    return {
        "id": id,
        "token": token,
        "state": (State.COMPLETED if replayable else State.UNREPLAYABLE).value,
        "ttl": micros(ttl),
        "retention": micros(retention),
        "status": response.status,
        "headers": json.dumps([list(h) for h in response.headers]) if replayable else None,
        "body": response.body if replayable else None,
        "replayable": replayable,
        "trace_id": response.trace_id,
        "span_id": response.span_id,
        "channel": channel,
    }


def _claim_result(id: str, fingerprint: str, row: Row | None, lease: float) -> ClaimResult | None:
    """The claim's answer, or None when the statement raced a concurrent writer."""
    assert row is not None
    token, origin, previous, now, ptok, pca, pend = row[:7]
    if token is not None:
        was = None
        if origin in ("expired", "recovered") and ptok is not None:
            at, created, ended = now / 1_000_000, pca / 1_000_000, pend / 1_000_000
            was = (
                taken_over(int(ptok), created, ended, at, lease)
                if origin == "recovered"
                else Previous(int(ptok), created, ended, at)
            )
        return Claimed(
            int(token),
            expired_before=origin == "expired",
            recovered=origin == "recovered",
            previous_fingerprint=previous,
            previous=was,
        )
    record = _record(now, row[7:])
    if record is None:
        return None  # inserted by another session after our snapshot: look again
    lapsed = record.state is State.IN_FLIGHT and record.lease_until * 1_000_000 <= now
    if lapsed and record.fingerprint == fingerprint:
        return None  # a lapsed lease someone else just took over
    if record.state is State.TOMBSTONE:
        return None  # an expired record someone else just claimed
    return Existing(record, int(now) / 1_000_000)


def _lease_left(row: Row | None) -> float | None:
    return None if row is None else int(row[0]) / 1_000_000


def _record(now: int, row: Row) -> Record | None:
    """The record as ``records.resolve`` sees it at ``now``; None when absent."""
    (id, fp, state_name, token, lease_until, expires_at, retain_until, created_at) = row[:8]
    status, headers, body, replayable, trace_id, span_id = row[8:14]
    phases = json.loads(row[14]) if len(row) > 14 and row[14] is not None else []
    if id is None:
        return None
    state = State(state_name)
    response = None
    if state is not State.IN_FLIGHT:
        if now >= retain_until:
            return None
        if now >= expires_at:
            state = State.TOMBSTONE  # past its TTL the body is gone (purge strips it)
        else:
            response = StoredResponse(
                int(status),
                tuple((str(k), str(v)) for k, v in json.loads(headers or "[]")),
                bytes(body) if body is not None else b"",
                bool(replayable),
                trace_id,
                span_id,
            )
    return Record(
        id,
        fp,
        state,
        int(token),
        lease_until / 1_000_000,
        expires_at / 1_000_000,
        retain_until / 1_000_000 if state is not State.IN_FLIGHT else 0.0,
        response,
        created_at / 1_000_000,
        str(phases[-1]) if phases else None,
    )

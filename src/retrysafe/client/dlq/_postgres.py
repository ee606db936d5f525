"""The dead-letter queue in a PostgreSQL table (``_backend.DLQBackend``).

One table (``{table_prefix}dlq``, default ``retrysafe_dlq``), one autocommit statement per
operation. The claim is ``UPDATE ... WHERE id = ... AND state = 'parked' AND <due> ...
RETURNING id`` (SPEC 25): under READ COMMITTED a second replayer's UPDATE waits for the first
to commit and then re-checks its WHERE on the new row version, which is no longer due — so
exactly one replayer gets the row back. Settling and releasing match ``claim = token``, which
fences out a replayer whose lease lapsed. Times are the queue's clock, passed in (see
``_backend.py``), stored as ``double precision`` epoch seconds like the SQLite file.

The table is created on first use (idempotently, under an advisory lock, so concurrent first
users do not race). Connections come from a small psycopg_pool pool; ``timeout`` bounds each
statement and the wait for a connection, so an outage answers StoreUnavailable in bounded
time. URL options as for the PostgreSQL store (``stores/postgres.py``)::

    postgresql://user:password@host:5432/db?schema=app&table_prefix=retrysafe_&pool_size=4
"""

from __future__ import annotations

from retrysafe._extras import require

require("postgres", "the PostgreSQL dead-letter queue", "psycopg", "psycopg_pool")


import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

from retrysafe._driver_errors import translated
from retrysafe.client.dlq._entries import DeadLetter, EntryState, Settlement
from retrysafe.client.dlq._rows import COLUMNS, entry_of, row_of
from retrysafe.errors import ConfigurationError
from retrysafe.stores.postgres import libpq_options, server_name
from retrysafe.stores.url import redacted_url, split_options

URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,  # schema of the table, default: the connection's search_path
    "table_prefix": str,  # table name prefix, default "retrysafe_" (table retrysafe_dlq)
    "pool_size": int,  # max connections, default 4 (replays are paced)
    "timeout": float,  # seconds per statement and per wait for a connection, default 2
    "connect_timeout": float,  # seconds per connect, default 2 (libpq's minimum)
}
_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, psycopg_pool.PoolTimeout)

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    seq         bigserial,
    id          text PRIMARY KEY,
    state       text NOT NULL,
    reason      text NOT NULL,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    not_before  double precision NOT NULL,
    replay_by   double precision NOT NULL,
    method      text NOT NULL,
    url         text NOT NULL,
    headers     text NOT NULL,
    redacted    text NOT NULL,
    body        bytea NOT NULL,
    key         text NOT NULL,
    attempts    text NOT NULL,
    last_error  text NOT NULL,
    replays     integer NOT NULL DEFAULT 0,
    last_status integer,
    claim       text
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {table} (state, not_before)"
# Due-ness of an entry, as in DLQBackend.claim.
_CLAIMABLE = (
    "((state = 'parked' AND (%(force)s OR not_before <= %(now)s OR replay_by < %(now)s)) "
    "OR (state = 'replaying' AND not_before <= %(now)s))"
)


class PostgresDLQ:
    """Dead letters in one PostgreSQL table."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        table_prefix: str = "retrysafe_",
        pool_size: int = 4,
        timeout: float = 2.0,
        connect_timeout: float = 2.0,
    ) -> None:
        clean, o = split_options(url, URL_OPTIONS)
        if clean.partition("://")[0].lower() not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a PostgreSQL DLQ URL: {redacted_url(url)!r}")
        schema = o.get("schema", schema)
        self.table_name = f"{o.get('table_prefix', table_prefix)}dlq"
        pool_size = o.get("pool_size", pool_size)
        timeout = o.get("timeout", timeout)
        connect_timeout = o.get("connect_timeout", connect_timeout)
        if pool_size < 1 or timeout <= 0:
            raise ConfigurationError("PostgreSQL DLQ: pool_size and timeout must be > 0")
        parts = (schema, self.table_name) if schema else (self.table_name,)
        self._table = sql.Identifier(*parts)
        self._schema = sql.Identifier(schema) if schema else None
        self._what = f"dead-letter queue {server_name(clean)}"
        self._pool = psycopg_pool.ConnectionPool(
            clean,
            min_size=0,  # a queue that is only parked into now and then holds no connection
            max_size=pool_size,
            timeout=timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, round(connect_timeout)),
                "options": libpq_options(clean, timeout, None),
            },
            open=False,
            name=f"retrysafe-{self.table_name}",
        )
        self._pool.open(wait=False)  # connects on first use: a down server is no error yet
        self._ready = False
        self._ready_lock = threading.Lock()
        self._select = sql.SQL("SELECT {cols} FROM {table}").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), table=self._table
        )

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, the table made if need be; errors become StoreUnavailable."""
        with translated(self._what, _ERRORS):
            if not self._ready:
                self._create()
            with self._pool.connection() as conn:
                yield conn

    def _create(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            lock_id = hashlib.sha256(f"retrysafe-dlq:{self.table_name}".encode()).digest()[:8]
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)",
                    (int.from_bytes(lock_id, "big", signed=True),),
                )
                if self._schema is not None:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
                conn.execute(sql.SQL(_CREATE).format(table=self._table))
                index = sql.Identifier(f"{self.table_name}_due")
                conn.execute(sql.SQL(_INDEX).format(index=index, table=self._table))
            self._ready = True

    def drop(self) -> None:
        """Drop the table (tests and uninstall)."""
        with translated(self._what, _ERRORS), self._pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._table))
        self._ready = False

    def insert(self, e: DeadLetter) -> None:
        statement = sql.SQL("INSERT INTO {table} ({cols}) VALUES ({marks})").format(
            table=self._table,
            cols=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
            marks=sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
        )
        with self._conn() as conn:
            conn.execute(statement, row_of(e))

    def get(self, entry_id: str) -> DeadLetter | None:
        with self._conn() as conn:
            row = conn.execute(self._select + sql.SQL(" WHERE id = %s"), (entry_id,)).fetchone()
        return entry_of(row) if row is not None else None

    def entries(self, state: EntryState | None, limit: int, offset: int = 0) -> list[DeadLetter]:
        where = sql.SQL(" WHERE state = %(state)s") if state is not None else sql.SQL("")
        order = sql.SQL(" ORDER BY created_at, seq LIMIT %(limit)s OFFSET %(offset)s")
        statement = self._select + where + order
        params = {"state": state.value if state else None, "limit": limit, "offset": offset}
        with self._conn() as conn:
            rows = conn.execute(statement, params).fetchall()
        return [entry_of(r) for r in rows]

    def count(self, states: Sequence[EntryState]) -> int:
        statement = sql.SQL("SELECT count(*) FROM {} WHERE state = ANY(%s)").format(self._table)
        with self._conn() as conn:
            row = conn.execute(statement, ([s.value for s in states],)).fetchone()
        return int(row[0]) if row else 0

    def purge(self, states: Sequence[EntryState]) -> int:
        statement = sql.SQL("DELETE FROM {} WHERE state = ANY(%s)").format(self._table)
        with self._conn() as conn:
            return conn.execute(statement, ([s.value for s in states],)).rowcount

    def claim(
        self, entry_id: str, token: str, *, force: bool, now: float, lease_until: float
    ) -> bool:
        statement = sql.SQL(
            "UPDATE {} SET state = 'replaying', claim = %(token)s, not_before = %(lease)s, "
            "updated_at = %(now)s WHERE id = %(id)s AND " + _CLAIMABLE + " RETURNING id"
        ).format(self._table)
        params = {"token": token, "lease": lease_until, "now": now, "id": entry_id, "force": force}
        with self._conn() as conn:
            return conn.execute(statement, params).fetchone() is not None

    def release(self, entry_id: str, token: str, *, not_before: float, now: float) -> None:
        statement = sql.SQL(
            "UPDATE {} SET state = 'parked', claim = NULL, not_before = %s, updated_at = %s "
            "WHERE id = %s AND state = 'replaying' AND claim = %s"
        ).format(self._table)
        with self._conn() as conn:
            conn.execute(statement, (not_before, now, entry_id, token))

    def settle(self, s: Settlement) -> None:
        statement = sql.SQL(
            "UPDATE {} SET state = %s, claim = NULL, updated_at = %s, not_before = %s, "
            "replays = replays + %s, last_status = COALESCE(%s, last_status), last_error = %s "
            "WHERE id = %s AND state = 'replaying' AND claim = %s"
        ).format(self._table)
        with self._conn() as conn:
            conn.execute(statement, s.row())

    def close(self) -> None:
        self._pool.close()

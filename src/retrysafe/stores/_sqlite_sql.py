"""The SQL of the SQLite store: its schema, the statements of a record's life, rows <-> records.

Shared by :class:`~retrysafe.stores.sqlite.SQLiteStore` and the atomic unit
(``_sqlite_atomic.py``), which completes a record with :func:`complete_in` inside the
application's own transaction (SPEC 13a). Everything here is a value or a function of a
connection the caller holds: no connection is opened, no transaction begun or committed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator

from retrysafe._records import Record, State, StoredResponse, complete_on
from retrysafe.errors import StoreUnavailable

TABLE = "retrysafe_records"
# Recovery points of atomic handlers (SPEC 13a): committed phases outlive the claim that wrote
# them (a release or a takeover must resume, not redo), so they are rows of their own, keyed
# like the record and dropped when the record completes or their retention lapses.
PHASES = f"{TABLE}_phases"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id           TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL,
    token        INTEGER NOT NULL,
    lease_until  REAL NOT NULL,
    expires_at   REAL NOT NULL,
    retain_until REAL NOT NULL,
    created_at   REAL NOT NULL,
    status       INTEGER,
    headers      TEXT,
    body         BLOB,
    replayable   INTEGER,
    trace_id     TEXT,
    span_id      TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {TABLE}_retain ON {TABLE} (retain_until);
CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_at)
    WHERE state IN ('completed', 'unreplayable');
CREATE TABLE IF NOT EXISTS {TABLE}_tokens (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    last  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {PHASES} (
    id           TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    phases       TEXT NOT NULL,
    retain_until REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {PHASES}_retain ON {PHASES} (retain_until);
"""
COLUMNS = (
    "id, fingerprint, state, token, lease_until, expires_at, retain_until, created_at, "
    "status, headers, body, replayable, trace_id, span_id"
)
SELECT = (
    "SELECT "
    + ", ".join(f"r.{c.strip()}" for c in COLUMNS.split(","))
    + f", p.phases FROM {TABLE} r LEFT JOIN {PHASES} p "
    "ON p.id = r.id AND p.fingerprint = r.fingerprint WHERE r.id = ?"
)
UPSERT = f"INSERT OR REPLACE INTO {TABLE} ({COLUMNS}) VALUES ({', '.join('?' * 14)})"
# The largest token ever minted in this file, so a released or deleted key never gets an old
# token back (see records.claim_on); read and bumped inside the claim's own transaction.
LAST_TOKEN = f"SELECT last FROM {TABLE}_tokens WHERE one = 1"
SET_LAST_TOKEN = f"INSERT OR REPLACE INTO {TABLE}_tokens (one, last) VALUES (1, ?)"

# An abandoned claim is purged this long after its lease lapsed (see MemoryStore).
ABANDONED_GRACE = 3600.0


@contextlib.contextmanager
def translated(path: str) -> Iterator[None]:
    """Turn sqlite3 failures into StoreUnavailable at the store boundary (chained)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"SQLite store {path!r}: {exc}") from exc


def row_to_record(row: tuple[object, ...] | None) -> Record | None:
    if row is None:
        return None
    (id, fp, state, token, lease_until, expires_at, retain_until, created_at) = row[:8]
    status, headers, body, replayable, trace_id, span_id = row[8:14]
    phases = json.loads(str(row[14])) if len(row) > 14 and row[14] is not None else []
    response = None
    if status is not None:
        response = StoredResponse(
            int(status),  # type: ignore[call-overload]
            tuple((str(k), str(v)) for k, v in json.loads(str(headers))),
            bytes(body) if body is not None else b"",  # type: ignore[call-overload]
            bool(replayable),
            str(trace_id) if trace_id is not None else None,
            str(span_id) if span_id is not None else None,
        )
    return Record(
        str(id),
        str(fp),
        State(state),
        int(token),  # type: ignore[call-overload]
        float(lease_until),  # type: ignore[arg-type]
        float(expires_at),  # type: ignore[arg-type]
        float(retain_until),  # type: ignore[arg-type]
        response,
        float(created_at),  # type: ignore[arg-type]
        str(phases[-1]) if phases else None,
    )


def record_to_row(record: Record) -> tuple[object, ...]:
    r = record.response
    # An in-flight row's retain_until is when an abandoned claim may be purged.
    retain = (
        record.retain_until
        if record.state is not State.IN_FLIGHT
        else (record.lease_until + ABANDONED_GRACE)
    )
    return (
        record.id,
        record.fingerprint,
        record.state.value,
        record.token,
        record.lease_until,
        record.expires_at,
        retain,
        record.created_at,
        None if r is None else r.status,
        None if r is None else json.dumps([list(h) for h in r.headers]),
        None if r is None else r.body,
        None if r is None else int(r.replayable),
        None if r is None else r.trace_id,
        None if r is None else r.span_id,
    )


def read_record(conn: sqlite3.Connection, id: str) -> Record | None:
    return row_to_record(conn.execute(SELECT, (id,)).fetchone())


def complete_in(
    conn: sqlite3.Connection,
    id: str,
    token: int,
    response: StoredResponse,
    ttl: float,
    retention: float,
    now: float,
) -> bool:
    """Complete the record with statements on ``conn``, inside the caller's transaction.

    Does not commit: the caller's commit makes the completion and its own writes durable
    together (SPEC 13a). Returns False (and writes nothing) if ``token`` is fenced out.
    """
    record = complete_on(read_record(conn, id), token, response, ttl, retention, now)
    if record is None:
        return False
    conn.execute(UPSERT, record_to_row(record))
    # The result supersedes the recovery points: a completed record replays, never resumes.
    conn.execute(f"DELETE FROM {PHASES} WHERE id = ?", (id,))
    return True

"""The dead-letter queue in a SQLite file (the default backend; ``_backend.DLQBackend``).

One table, WAL, one connection per thread, so threads and processes may share the file. The
claim is one ``UPDATE ... WHERE state = 'parked' ...``: SQLite serialises writers, so of two
replayers racing for an entry exactly one matches the row (SPEC 25).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from retrysafe.client.dlq._entries import DeadLetter, EntryState, Settlement
from retrysafe.client.dlq._rows import COLUMNS, entry_of, row_of
from retrysafe.errors import ConfigurationError, StoreUnavailable

TABLE = "retrysafe_dlq"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    not_before  REAL NOT NULL,
    replay_by   REAL NOT NULL,
    method      TEXT NOT NULL,
    url         TEXT NOT NULL,
    headers     TEXT NOT NULL,
    redacted    TEXT NOT NULL,
    body        BLOB NOT NULL,
    key         TEXT NOT NULL,
    attempts    TEXT NOT NULL,
    last_error  TEXT NOT NULL,
    replays     INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    claim       TEXT
);
CREATE INDEX IF NOT EXISTS {TABLE}_due ON {TABLE} (state, not_before);
"""
# Files made before claims existed get the column on open (an ALTER TABLE, once).
_MIGRATION = f"ALTER TABLE {TABLE} ADD COLUMN claim TEXT"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
# Due-ness of an entry, as in DLQBackend.claim; the parameters are named.
CLAIMABLE = (
    "((state = 'parked' AND (:force OR not_before <= :now OR replay_by < :now)) "
    "OR (state = 'replaying' AND not_before <= :now))"
)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` / ``sqlite:////abs.db`` / a bare path -> the file."""
    if not url.startswith("sqlite://"):
        return Path(url)
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"bad DLQ URL {url!r}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return Path(rest[1:])


class SQLiteDLQ:
    """Dead letters in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")}
            if "claim" not in columns:
                with contextlib.suppress(sqlite3.OperationalError):  # another opener won
                    db.execute(_MIGRATION)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; sqlite3 errors become StoreUnavailable (chained)."""
        try:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = sqlite3.connect(
                    self.path, timeout=10.0, isolation_level=None, check_same_thread=False
                )  # used by one thread at a time; closed by whichever thread closes the queue
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._local.conn = conn
                with self._lock:
                    self._all.append(conn)
            yield conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"dead-letter queue {str(self.path)!r}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def insert(self, e: DeadLetter) -> None:
        with self._db() as db:
            db.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 17)})",
                row_of(e),
            )

    def get(self, entry_id: str) -> DeadLetter | None:
        with self._db() as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (entry_id,)).fetchone()
        return entry_of(row) if row is not None else None

    def entries(self, state: EntryState | None, limit: int, offset: int = 0) -> list[DeadLetter]:
        query = _SELECT
        args: tuple[object, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            args = (state.value,)
        with self._db() as db:
            rows = db.execute(
                query + " ORDER BY created_at, rowid LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [entry_of(r) for r in rows]

    def count(self, states: Sequence[EntryState]) -> int:
        marks = ", ".join("?" * len(states))
        with self._db() as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM {TABLE} WHERE state IN ({marks})",
                tuple(s.value for s in states),
            ).fetchone()
        return int(row[0])

    def purge(self, states: Sequence[EntryState]) -> int:
        marks = ", ".join("?" * len(states))
        with self._db() as db:
            cur = db.execute(
                f"DELETE FROM {TABLE} WHERE state IN ({marks})", tuple(s.value for s in states)
            )
        return cur.rowcount

    def claim(
        self, entry_id: str, token: str, *, force: bool, now: float, lease_until: float
    ) -> bool:
        with self._db() as db:
            cur = db.execute(
                f"UPDATE {TABLE} SET state = 'replaying', claim = :token, not_before = :lease, "
                f"updated_at = :now WHERE id = :id AND {CLAIMABLE}",
                {"token": token, "lease": lease_until, "now": now, "id": entry_id, "force": force},
            )
        return cur.rowcount == 1

    def release(self, entry_id: str, token: str, *, not_before: float, now: float) -> None:
        with self._db() as db:
            db.execute(
                f"UPDATE {TABLE} SET state = 'parked', claim = NULL, not_before = ?, "
                "updated_at = ? WHERE id = ? AND state = 'replaying' AND claim = ?",
                (not_before, now, entry_id, token),
            )

    def settle(self, s: Settlement) -> None:
        with self._db() as db:
            db.execute(
                f"UPDATE {TABLE} SET state = ?, claim = NULL, updated_at = ?, not_before = ?, "
                "replays = replays + ?, last_status = COALESCE(?, last_status), "
                "last_error = ? WHERE id = ? AND state = 'replaying' AND claim = ?",
                s.row(),
            )

"""What the dead-letter queue keeps, and the small protocol its storage backends implement.

:class:`~retrysafe.client.dlq.DeadLetterQueue` holds the logic of SPEC 25 (redaction, replay,
pacing, reconciliation); a backend only stores entries and moves them between states
atomically. Three backends, one module each, chosen by the queue's URL (:func:`open_backend`):

sqlite:///relative.db, sqlite:////abs.db, a path   ``dlq_sqlite.py`` (the default)
redis://host:6379/0?prefix=retrysafe:dlq:           ``dlq_redis.py`` (rediss:// for TLS)
postgresql://user@host/db?table_prefix=retrysafe_   ``dlq_postgres.py`` (postgres:// too)

Time is the queue's clock, passed in as ``now``: the DLQ is client-side state, its deadlines
(``not_before``, ``replay_by``, claim leases) are the client's. Backends compare the numbers
they are given and never read a clock of their own, so one fake clock drives every backend in
tests. Backends are synchronous; the queue's async methods run them on a worker thread.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from retrysafe.client.retry import Attempt
from retrysafe.errors import ConfigurationError
from retrysafe.stores.url import redacted_url


class EntryState(enum.Enum):
    PARKED = "parked"  # waiting for a replay
    REPLAYING = "replaying"  # claimed by a replayer; the claim lapses at not_before
    DONE = "done"  # a replay got an answer (2xx/3xx, or a stored replay of one)
    FAILED = "failed"  # a replay got a terminal answer (422 mismatch, other 4xx)
    RECONCILE = "reconcile"  # past its replay window: a human or a job must check the far side

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked call."""

    id: str
    state: EntryState
    reason: str
    created_at: float
    updated_at: float
    not_before: float
    replay_by: float
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    redacted: tuple[str, ...]  # names of the headers removed before storing
    body: bytes
    key: str
    attempts: tuple[Attempt, ...]
    last_error: str
    replays: int = 0
    last_status: int | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A replay's outcome, written only while the replayer still holds claim ``token``."""

    id: str
    token: str
    state: EntryState
    now: float
    not_before: float
    counted: bool  # a replay was sent (a reconcile flag is not a replay)
    status: int | None
    detail: str

    def row(self) -> tuple[object, ...]:
        """The values the SQL backends' settle statement binds, in its placeholders' order:
        state, updated_at, not_before, replays added, last_status, last_error, id, claim."""
        return (
            self.state.value,
            self.now,
            self.not_before,
            int(self.counted),
            self.status,
            self.detail,
            self.id,
            self.token,
        )


class DLQBackend(Protocol):
    """Storage of one dead-letter queue. Every method is one atomic operation on the store.

    The claim protocol (SPEC 25: each entry sent by one replayer): :meth:`claim` moves an entry
    to ``replaying`` with a fresh token and ``not_before = lease_until`` only while it is still
    due; :meth:`release` and :meth:`settle` write only while the entry is ``replaying`` under
    the same token, so a replayer whose lease lapsed is fenced out.
    """

    def insert(self, entry: DeadLetter) -> None: ...

    def get(self, entry_id: str) -> DeadLetter | None: ...

    def entries(self, state: EntryState | None, limit: int, offset: int = 0) -> list[DeadLetter]:
        """Oldest first (parking order); all states when ``state`` is None; ``limit`` entries
        after skipping the first ``offset`` (paging)."""
        ...

    def count(self, states: Sequence[EntryState]) -> int: ...

    def purge(self, states: Sequence[EntryState]) -> int: ...

    def claim(
        self, entry_id: str, token: str, *, force: bool, now: float, lease_until: float
    ) -> bool:
        """Take the entry if it is parked and due (or ``force``, or past ``replay_by``), or
        claimed by a replayer whose lease (``not_before``) has lapsed. True if taken."""
        ...

    def release(self, entry_id: str, token: str, *, not_before: float, now: float) -> None:
        """Hand a claimed entry back: parked again, due at ``not_before``."""
        ...

    def settle(self, s: Settlement) -> None: ...

    def close(self) -> None: ...


def open_backend(url: str | Path) -> DLQBackend:
    """The backend named by ``url`` (a bare path is a SQLite file)."""
    if isinstance(url, Path):
        from retrysafe.client.dlq_sqlite import SQLiteDLQ

        return SQLiteDLQ(url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "sqlite"):
        from retrysafe.client.dlq_sqlite import SQLiteDLQ, sqlite_path

        if scheme and "?" in url:  # the path would swallow the query: a typo, not a file name
            for name, _ in parse_qsl(url.partition("?")[2], keep_blank_values=True):
                raise ConfigurationError(
                    f"unknown option {name!r} in SQLite DLQ URL {url!r}: a SQLite "
                    "dead-letter queue takes no options"
                )
        return SQLiteDLQ(sqlite_path(url))
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        try:
            from retrysafe.client.dlq_redis import RedisDLQ
        except ImportError as exc:
            raise ConfigurationError(
                f"a Redis DLQ needs redis-py: pip install 'retrysafe[redis]' ({exc})"
            ) from exc
        return RedisDLQ(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from retrysafe.client.dlq_postgres import PostgresDLQ
        except ImportError as exc:
            raise ConfigurationError(
                f"a PostgreSQL DLQ needs psycopg 3: pip install 'retrysafe[postgres]' ({exc})"
            ) from exc
        return PostgresDLQ(url)
    raise ConfigurationError(
        f"the dead-letter queue supports sqlite://, redis://, rediss://, postgresql:// and "
        f"postgres:// URLs, not {redacted_url(url)!r}"
    )


# -- entries <-> stored text (shared by the backends) -----------------------------------------


def attempts_json(attempts: Sequence[Attempt]) -> str:
    return json.dumps(
        [
            {
                "number": a.number,
                "started": a.started,
                "duration": a.duration,
                "status": a.status,
                "error": a.error,
                "wait": a.wait,
            }
            for a in attempts
        ]
    )


def attempts_of(text: str) -> tuple[Attempt, ...]:
    return tuple(Attempt(**a) for a in json.loads(text))


def headers_json(headers: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(h) for h in headers])


def headers_of(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


# The stored fields of an entry, in the order of the SQL backends' columns.
COLUMNS = (
    "id",
    "state",
    "reason",
    "created_at",
    "updated_at",
    "not_before",
    "replay_by",
    "method",
    "url",
    "headers",
    "redacted",
    "body",
    "key",
    "attempts",
    "last_error",
    "replays",
    "last_status",
)


def row_of(e: DeadLetter) -> tuple[Any, ...]:
    """An entry as stored values in :data:`COLUMNS` order (lists as JSON text)."""
    return (
        e.id,
        e.state.value,
        e.reason,
        e.created_at,
        e.updated_at,
        e.not_before,
        e.replay_by,
        e.method,
        e.url,
        headers_json(e.headers),
        json.dumps(list(e.redacted)),
        e.body,
        e.key,
        attempts_json(e.attempts),
        e.last_error,
        e.replays,
        e.last_status,
    )


def entry_of(row: Sequence[Any]) -> DeadLetter:
    """Stored values in :data:`COLUMNS` order -> an entry."""
    return DeadLetter(
        id=str(row[0]),
        state=EntryState(row[1]),
        reason=str(row[2]),
        created_at=float(row[3]),
        updated_at=float(row[4]),
        not_before=float(row[5]),
        replay_by=float(row[6]),
        method=str(row[7]),
        url=str(row[8]),
        headers=headers_of(row[9]),
        redacted=tuple(json.loads(row[10])),
        body=bytes(row[11]),
        key=str(row[12]),
        attempts=attempts_of(row[13]),
        last_error=str(row[14]),
        replays=int(row[15]),
        last_status=None if row[16] is None else int(row[16]),
    )

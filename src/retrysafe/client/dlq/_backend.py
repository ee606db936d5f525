"""The small protocol the dead-letter queue's storage backends implement, and the choice of one.

:class:`~retrysafe.client.dlq.DeadLetterQueue` holds the logic of SPEC 25 (redaction, replay,
pacing, reconciliation); a backend only stores entries and moves them between states
atomically. Three backends, one module each, chosen by the queue's URL (:func:`open_backend`):

sqlite:///relative.db, sqlite:////abs.db, a path   ``_sqlite.py`` (the default)
redis://host:6379/0?prefix=retrysafe:dlq:           ``_redis.py`` (rediss:// for TLS)
postgresql://user@host/db?table_prefix=retrysafe_   ``_postgres.py`` (postgres:// too)

The backends import what they store (``_entries.py``) and how (``_rows.py``), never this module,
which imports them only when a URL names them.

Time is the queue's clock, passed in as ``now``: the DLQ is client-side state, its deadlines
(``not_before``, ``replay_by``, claim leases) are the client's. Backends compare the numbers
they are given and never read a clock of their own, so one fake clock drives every backend in
tests. Backends are synchronous; the queue's async methods run them on a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from retrysafe.client.dlq._entries import DeadLetter, EntryState, Settlement
from retrysafe.errors import ConfigurationError
from retrysafe.stores.url import redacted_url


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
        from retrysafe.client.dlq._sqlite import SQLiteDLQ

        return SQLiteDLQ(url)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "sqlite"):
        from retrysafe.client.dlq._sqlite import SQLiteDLQ, sqlite_path

        if scheme and "?" in url:  # the path would swallow the query: a typo, not a file name
            for name, _ in parse_qsl(url.partition("?")[2], keep_blank_values=True):
                raise ConfigurationError(
                    f"unknown option {name!r} in SQLite DLQ URL {url!r}: a SQLite "
                    "dead-letter queue takes no options"
                )
        return SQLiteDLQ(sqlite_path(url))
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        try:
            from retrysafe.client.dlq._redis import RedisDLQ
        except ImportError as exc:
            raise ConfigurationError(
                f"a Redis DLQ needs redis-py: pip install 'retrysafe[redis]' ({exc})"
            ) from exc
        return RedisDLQ(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from retrysafe.client.dlq._postgres import PostgresDLQ
        except ImportError as exc:
            raise ConfigurationError(
                f"a PostgreSQL DLQ needs psycopg 3: pip install 'retrysafe[postgres]' ({exc})"
            ) from exc
        return PostgresDLQ(url)
    raise ConfigurationError(
        f"the dead-letter queue supports sqlite://, redis://, rediss://, postgresql:// and "
        f"postgres:// URLs, not {redacted_url(url)!r}"
    )

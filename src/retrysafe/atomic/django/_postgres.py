"""Django on PostgreSQL (psycopg 3 backend): Django's own connection is lent to the unit.

The link enters ``transaction.atomic(using)`` and hands the unit the psycopg connection under
it: the fencing re-check (``SELECT ... FOR UPDATE`` of the record row), the view's ORM writes
and the record's completion run in one transaction, ended by the unit's one ``COMMIT``
(SPEC 13a). The atomic block stays open for the whole execution, recovery points included
(Django's autocommit stays off, so a write after a ``phase()`` begins the next transaction,
whose re-check comes before its commit); ``close`` leaves it the way the last transaction
ended, so ``transaction.on_commit`` callbacks run after a commit and are dropped otherwise.

Under ASGI the unit's async steps run on the thread the connection belongs to
(:meth:`~retrysafe.atomic.django._thread.OwnThread.run`), not on a worker thread of their own.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.apps import apps
from django.db import connections
from django.db import transaction as dj_transaction

from retrysafe.atomic.django._block import RolledBack, outermost
from retrysafe.atomic.django._tables import store_tables
from retrysafe.atomic.django._thread import OwnThread
from retrysafe.errors import ConfigurationError, ForeignConnection
from retrysafe.stores.postgres import PostgresStore, reaches_store


class DjangoPostgresLink(OwnThread):
    """``connections[using]`` (PostgreSQL, psycopg 3) as the unit's lent connection."""

    def __init__(self, store: PostgresStore, using: str) -> None:
        self.using = using
        self._wrapper: Any = connections[using]
        super().__init__(self._wrapper)
        if self._wrapper.vendor != "postgresql":
            raise ForeignConnection(
                f"database {using!r} is {self._wrapper.vendor}, but the idempotency store is "
                f"PostgreSQL ({store.sql.table_name}); atomic completion needs one database "
                "for both"
            )
        _same_tables(store)
        outermost(self._wrapper, using)
        self._wrapper.ensure_connection()
        raw: object = self._wrapper.connection
        if not isinstance(raw, psycopg.Connection):
            raise ForeignConnection(
                f"database {using!r} uses the psycopg2 driver; atomic completion speaks "
                "psycopg 3 (pip install 'psycopg[binary]': Django picks it when installed)"
            )
        if not reaches_store(raw, store):
            raise ForeignConnection(
                f"database {using!r} does not reach the idempotency store's PostgreSQL "
                f"database ({store.sql.table_name}); atomic completion needs the application's "
                "writes and the record in one database: open the store on DATABASES[{using!r}]"
            )
        self._raw: psycopg.Connection[Any] = raw
        self._atomic: Any = dj_transaction.atomic(using=using)
        self._atomic.__enter__()  # autocommit off: the unit's first statement begins
        self._committed = False

    @property
    def raw(self) -> psycopg.Connection[Any]:
        return self._raw

    @property
    def araw(self) -> None:
        return None

    @property
    def handle(self) -> Any:
        return self._wrapper

    def flush(self) -> None:
        pass  # the ORM writes as it goes

    def ended(self, committed: bool) -> None:
        self._committed = committed

    def close(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is None or self.orphaned:  # an orphan's connection is closed: rolled back
            return
        if self._committed and not self._wrapper.needs_rollback:
            atomic.__exit__(None, None, None)  # nothing left to commit: runs on_commit hooks
        else:
            atomic.__exit__(RolledBack, RolledBack(), None)

    async def aflush(self) -> None:
        pass  # the ORM writes as it goes

    async def aclose(self) -> None:
        await self.run(self.close)


def _same_tables(store: PostgresStore) -> None:
    """With retrysafe's app installed, its migration made the tables the settings name: the
    store must use those, not tables of its own making elsewhere."""
    if not apps.is_installed("retrysafe.atomic.django"):
        return
    schema, prefix = store_tables()
    if (store.sql.schema, store.sql.prefix) != (schema, prefix):
        raise ConfigurationError(
            f"the idempotency store uses schema {store.sql.schema!r} and table prefix "
            f"{store.sql.prefix!r}, but Django's settings (RETRYSAFE_SCHEMA, "
            f"RETRYSAFE_TABLE_PREFIX) give the migration {schema!r} and {prefix!r}: make them "
            "the same"
        )

"""Atomic completion with Django (SPEC 13a): the ORM's writes commit with the record.

Add ``"retrysafe.atomic.django"`` to ``INSTALLED_APPS`` (its migration creates the record tables
in the database it migrates, SQLite or PostgreSQL; the store would also create them itself),
open the store on the same database as ``DATABASES["default"]`` (the same SQLite file, or the
same PostgreSQL database with the psycopg 3 backend, schema and table prefix as the settings
``RETRYSAFE_SCHEMA`` / ``RETRYSAFE_TABLE_PREFIX`` say) and wrap the WSGI application::

    application = WSGIIdempotencyMiddleware(
        get_wsgi_application(), store=SQLiteStore(settings.DATABASES["default"]["NAME"]),
        atomic=True,
    )

In a view (or an ``@idempotent(..., atomic=True)`` function)::

    from retrysafe.atomic import django as dj_atomic

    def create_charge(request):
        dj_atomic.transaction()                  # transaction.atomic() on "default", begun now
        Charge.objects.create(order=..., cents=...)
        return JsonResponse({...}, status=201)   # the record commits with the charge

``transaction()`` enters ``transaction.atomic(using)`` for the execution and re-checks the
claim in it (SQLite: takes the write lock at once; PostgreSQL: locks the record row on
Django's own connection, :mod:`._postgres`); the middleware ends it with the record written,
which commits both. Nested ``transaction.atomic()`` blocks inside become savepoints as usual.
Not with ``ATOMIC_REQUESTS`` (the outermost transaction must be the execution's, so a
:class:`~retrysafe.errors.ConfigurationError` says so).

Under ASGI (``get_asgi_application()`` behind the ASGI middleware, uvicorn & co.), sync views
call ``transaction()`` as above, and async views ``await atransaction()`` and write with the
async ORM (``acreate``, ``asave``, ...). Either way the link is opened on the thread Django
gives the request's database work, and the unit's steps run there too (:mod:`._thread`): the
middleware commits inside the application's send of its last body message, before Django's
``request_finished`` closes the connection.
"""

from __future__ import annotations

from retrysafe._extras import require

require("django", "retrysafe.atomic.django", "django")


import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db import transaction as dj_transaction

from retrysafe.atomic._context import held_unit, postgres_unit
from retrysafe.atomic.django._block import RolledBack, outermost
from retrysafe.atomic.django._thread import OwnThread, on_request_thread
from retrysafe.errors import AtomicUnsupported, ConfigurationError, ForeignConnection
from retrysafe.stores import AtomicUnit
from retrysafe.stores.sqlite import PHASES, SQLiteStore, SQLiteUnit, same_database

if TYPE_CHECKING:  # psycopg is imported only for a PostgreSQL store
    from retrysafe.atomic.django._postgres import DjangoPostgresLink


class DjangoLink(OwnThread):
    """A Django database connection (``connections[using]``) as the unit's link.

    An async link too (:class:`~retrysafe.stores.sqlite.AsyncLink`): an async adapter
    runs the unit's steps on the thread the connection belongs to."""

    def __init__(self, store: SQLiteStore, using: str) -> None:
        self.using = using
        self._wrapper: Any = connections[using]
        super().__init__(self._wrapper)
        if self._wrapper.vendor != "sqlite":
            raise ForeignConnection(
                f"database {using!r} is {self._wrapper.vendor}, but the idempotency store is "
                f"the SQLite file {store.path!r}; atomic completion needs one database for both"
            )
        self._wrapper.ensure_connection()
        same_database(self._wrapper.connection, store)
        self._atomic: Any = None

    @property
    def raw(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self._wrapper.connection
        return conn

    @property
    def handle(self) -> Any:
        return self._wrapper

    def begin(self) -> None:
        outermost(self._wrapper, self.using)
        self._atomic = dj_transaction.atomic(using=self.using)
        self._atomic.__enter__()
        # Django begins with a plain (deferred) BEGIN unless OPTIONS["transaction_mode"] is
        # "IMMEDIATE": a first write takes the write lock now, before anything is read.
        self.raw.execute(f"DELETE FROM {PHASES} WHERE 0")

    def flush(self) -> None:
        pass  # the ORM writes as it goes

    def commit(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            atomic.__exit__(None, None, None)

    def rollback(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is not None and not self.orphaned:  # an orphan's connection is closed
            atomic.__exit__(RolledBack, RolledBack(), None)

    def close(self) -> None:
        self.rollback()  # Django keeps (and closes) its own connections

    async def aflush(self) -> None:
        pass  # the ORM writes as it goes

    async def aclose(self) -> None:
        await self.run(self.close)


def transaction(using: str = "default") -> Any:
    """Begin this execution's transaction on Django's ``using`` database (once) and return
    that database's connection wrapper; the ORM's writes on it commit with the record."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # sync code: a WSGI view, a sync view under ASGI (asgiref's thread), a function
    else:
        raise ConfigurationError(
            "retrysafe.atomic.django.transaction() blocks and Django's connections are not for "
            "the event loop's thread: in async code, use `await atransaction()`"
        )
    unit, kind = _unit_and_link(held_unit())
    link = unit.attach(kind, lambda store: kind(store, using))
    return _same_database(link, using).handle


async def atransaction(using: str = "default") -> Any:
    """:func:`transaction` for async views (Django under ASGI) and async functions: the
    transaction is begun on the thread Django's async ORM uses for this request, so
    ``await Model.objects.acreate(...)`` writes in it. Returns the connection wrapper, which
    belongs to that thread: reach it through the async ORM or ``sync_to_async``."""
    unit, kind = _unit_and_link(held_unit())
    link = await unit.aattach(kind, lambda store: on_request_thread(kind, store, using))
    return _same_database(link, using).handle


def _unit_and_link(unit: AtomicUnit) -> tuple[Any, Any]:
    """The unit (SQLite or PostgreSQL) and the kind of Django link it takes."""
    if isinstance(unit, SQLiteUnit):
        return unit, DjangoLink
    pg = postgres_unit(unit)
    if pg is None:
        raise AtomicUnsupported(
            f"the Django integration works with SQLiteStore and PostgresStore; this "
            f"execution's store gives {type(unit).__name__} units"
        )
    from retrysafe.atomic.django._postgres import DjangoPostgresLink

    return pg, DjangoPostgresLink


def _same_database(link: DjangoLink | DjangoPostgresLink, using: str) -> Any:
    if link.using != using:
        raise ConfigurationError(
            f"this execution's atomic transaction is on database {link.using!r}, not {using!r}"
        )
    return link


__all__ = ["DjangoLink", "atransaction", "transaction"]

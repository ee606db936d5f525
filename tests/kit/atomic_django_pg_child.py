"""Django on PostgreSQL in child processes: the WSGI charge worker and named scenarios.

Everything a test run makes lives in one schema named after its prefix (Django's
``search_path``, ``RETRYSAFE_SCHEMA``): Django's migration table, the ``ledger`` table of the
test model and retrysafe's ``<prefix>records`` tables, created by retrysafe's migration. The
store opens them with ``init_schema=False``, so it works only if the migration made exactly
the tables it expects.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from kit.atomic_django_child import configure, serve, serve_asgi
from kit.wakes import HANG
from retrysafe.stores.postgres import PostgresStore


def schema_of(prefix: str) -> str:
    return prefix.rstrip("_")


def configure_pg(url: str, prefix: str, sqlite_path: str | None = None) -> None:
    """Django's ``default`` database: the test PostgreSQL database, searching our schema."""
    info = conninfo_to_dict(url)
    default = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": info.get("dbname", ""),
        "USER": info.get("user", ""),
        "HOST": info.get("host", ""),
        "PORT": info.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={schema_of(prefix)}"},
    }
    databases: dict[str, Any] = {
        "default": default,
        # The same server's maintenance database: reachable, but not the store's.
        "elsewhere": {**default, "NAME": "postgres", "OPTIONS": {}},
    }
    if sqlite_path is not None:
        databases["lite"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path}
    configure(databases, RETRYSAFE_SCHEMA=schema_of(prefix), RETRYSAFE_TABLE_PREFIX=prefix)


def open_store(url: str, prefix: str, table_prefix: str | None = None) -> PostgresStore:
    """The store on the run's schema; on the migration's tables unless ``table_prefix``
    names others (created then by the store itself)."""
    return PostgresStore(
        url,
        schema=schema_of(prefix),
        table_prefix=table_prefix or prefix,
        pool_min=0,
        init_schema=table_prefix is not None,
    )


def django_pg_worker(url: str, prefix: str, mode: str, conn: Connection) -> None:
    """Serve ``(key, cents, pause)`` charge jobs through Django on PostgreSQL: WSGI, or
    uvicorn with the ASGI middleware (``asgi``: the sync view, ``asgi-async``: the async one)."""
    configure_pg(url, prefix)
    if mode.startswith("asgi"):
        serve_asgi(
            open_store(url, prefix), conn, "/acharges" if mode == "asgi-async" else "/charges"
        )
    else:
        serve(open_store(url, prefix), mode != "plain", conn)


@dataclass
class Ctx:
    """What a scenario needs: the database URL, the run's prefix, a scratch directory."""

    url: str
    prefix: str
    tmp: str

    @property
    def records(self) -> str:
        return f"{schema_of(self.prefix)}.{self.prefix}records"

    def ledger(self) -> list[tuple[str, int]]:
        """Committed ledger rows, read on a connection of their own."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                f"SELECT key, cents FROM {schema_of(self.prefix)}.ledger ORDER BY id"
            ).fetchall()
        return [(str(k), int(c)) for k, c in rows]

    def lapse(self) -> str:
        """Make every claim's lease lapse now (a paused holder); -> the fingerprint."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"UPDATE {self.records} SET lease_until = 0")
            row = conn.execute(f"SELECT fingerprint FROM {self.records}").fetchone()
        assert row is not None
        return str(row[0])

    def wait_for_lock_waiter(self) -> bool:
        """Until another backend waits on a lock of our records table; False if none came."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            deadline = time.monotonic() + HANG  # bounds a hang only
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND position(%s in query) > 0",
                    (f"{self.prefix}records",),
                ).fetchone()
                if row is not None and row[0] >= 1:
                    return True
                time.sleep(0.01)  # polling a condition, not waiting for it to happen
        return False


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread of its own (its own Django connection); its result or error."""
    out: list[Any] = []

    def run() -> None:
        from django.db import connections

        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out[0]


def _charge(store: PostgresStore, key: str, hooks: list[str]) -> Callable[..., Any]:
    """An atomic function writing through the ORM; the role says what each attempt does."""
    from django.db import transaction

    from kit.atomic_django_app.models import Charge
    from retrysafe import atomic
    from retrysafe.atomic import django as dj_atomic
    from retrysafe.tools import idempotent

    def write(cents: int, tag: str) -> None:
        Charge.objects.create(key=key, cents=cents)
        transaction.on_commit(lambda: hooks.append(tag))

    @idempotent(store, key=key, ignore_args=("role", "then"), atomic=True, namespace="charge")
    def charge(role: str, then: Callable[[], None] = lambda: None) -> str:
        dj_atomic.transaction()
        if role == "new":
            write(3, "new")
            return role
        write(1, "phase one")
        atomic.phase("one")
        then()  # the lease lapses here and a retry takes the key over
        write(2, "old")  # implicitly the next transaction: re-checked before its commit
        return role

    return charge


def takeover_between_phases(ctx: Ctx) -> dict[str, Any]:
    """The old holder commits a phase, pauses past its lease, a retry takes over and
    completes; the old holder's later writes are rolled back at its commit."""
    from retrysafe.errors import ClaimTakenOver

    store = open_store(ctx.url, ctx.prefix)
    hooks: list[str] = []
    charge = _charge(store, "fph", hooks)
    newer: list[Any] = []

    def take_over() -> None:
        ctx.lapse()
        newer.append(in_thread(lambda: charge("new")))

    try:
        charge("old", take_over)
        old = "committed"
    except ClaimTakenOver:
        old = "ClaimTakenOver"
    return {
        "old": old,
        "new": newer,
        "ledger": ctx.ledger(),
        "hooks": hooks,
        "replay": charge("again"),
    }


def fenced_at_begin(ctx: Ctx) -> dict[str, Any]:
    """A retry took the key over before the old holder's first transaction: refused there."""
    from kit.atomic_django_app.models import Charge
    from retrysafe.atomic import django as dj_atomic
    from retrysafe.errors import ClaimTakenOver
    from retrysafe.tools import idempotent

    store = open_store(ctx.url, ctx.prefix)

    @idempotent(store, key="fenced", ignore_args=("role",), atomic=True, namespace="charge")
    def charge(role: str) -> str:
        if role == "old":
            ctx.lapse()
            assert in_thread(lambda: charge("new")) == "new"
        dj_atomic.transaction()
        Charge.objects.create(key="fenced", cents=1 if role == "old" else 3)
        return role

    try:
        old = charge("old")
    except ClaimTakenOver as exc:
        old = type(exc).__name__
    return {"old": old, "ledger": ctx.ledger(), "replay": charge("again")}


def retry_waits_and_replays(ctx: Ctx) -> dict[str, Any]:
    """The record row is locked on Django's connection from transaction() on: a retry
    arriving after the lease lapsed waits for the commit, then replays it."""
    from kit.atomic_django_app.models import Charge
    from retrysafe import atomic
    from retrysafe._policy import storage_id
    from retrysafe.atomic import django as dj_atomic
    from retrysafe.tools import idempotent

    store = open_store(ctx.url, ctx.prefix)
    id = storage_id("function\0charge", "race")
    seen: dict[str, Any] = {}
    answers: list[Any] = []
    threads: list[threading.Thread] = []

    @idempotent(store, key="race", atomic=True, namespace="charge")
    def charge() -> str:
        fingerprint = ctx.lapse()  # before the row lock: it would wait for us after
        wrapper = dj_atomic.transaction()
        # One connection: Django's own, the one the unit re-checked the claim on.
        seen["same_connection"] = atomic.transaction() is wrapper.connection
        Charge.objects.create(key="race", cents=5)
        other = open_store(ctx.url, ctx.prefix)
        threads.append(
            threading.Thread(target=lambda: answers.append(other.claim(id, fingerprint, 10.0)))
        )
        threads[0].start()
        seen["waited"] = ctx.wait_for_lock_waiter()
        seen["answered_early"] = bool(answers)
        return "first"

    seen["result"] = charge()
    threads[0].join(10)
    answer = answers[0]
    seen["retry"] = (type(answer).__name__, answer.record.state.value)
    seen["ledger"] = ctx.ledger()
    return seen


def errors(ctx: Ctx) -> dict[str, Any]:
    """What each misconfiguration raises: (error class name, message)."""
    from django.db import connections, transaction

    from retrysafe.atomic import django as dj_atomic
    from retrysafe.atomic.django._tables import create_statements
    from retrysafe.stores.sqlite import SQLiteStore
    from retrysafe.tools import idempotent

    def attempt(store: Any, using: str = "default", inside_atomic: bool = False) -> Any:
        @idempotent(store, key=f"err-{len(out)}", atomic=True, namespace="charge")
        def charge() -> None:
            if inside_atomic:
                with transaction.atomic():
                    dj_atomic.transaction(using)
            else:
                dj_atomic.transaction(using)

        try:
            charge()
        except Exception as exc:
            return (type(exc).__name__, str(exc))
        return ("no error", "")

    out: dict[str, Any] = {}
    store = open_store(ctx.url, ctx.prefix)
    out["elsewhere"] = attempt(store, "elsewhere")
    out["sqlite_database"] = attempt(store, "lite")
    out["sqlite_store"] = attempt(SQLiteStore(f"{ctx.tmp}/store.db"))
    out["other_prefix"] = attempt(open_store(ctx.url, ctx.prefix, table_prefix=ctx.prefix + "x_"))
    out["inside_atomic"] = attempt(store, inside_atomic=True)
    legacy = connections["lite"]
    legacy.vendor = "mysql"  # a backend the migration does not know
    try:
        create_statements(legacy)
        out["migrate_mysql"] = ("no error", "")
    except Exception as exc:
        out["migrate_mysql"] = (type(exc).__name__, str(exc))
    out["ledger"] = ctx.ledger()
    return out


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    fn.__name__: fn
    for fn in (takeover_between_phases, fenced_at_begin, retry_waits_and_replays, errors)
}


def scenario(url: str, prefix: str, name: str, tmp: str, conn: Connection) -> None:
    """Run scenario ``name`` in this (child) process; send back ``("done", observations)``
    or ``("error", traceback)``."""
    try:
        configure_pg(url, prefix, sqlite_path=f"{tmp}/lite.db")
        conn.send(("done", SCENARIOS[name](Ctx(url, prefix, tmp))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))

"""The apps ``bench/e2e.py`` serves, one variant per server, and what each variant needs.

A server loads this module by name (uvicorn: ``e2e_apps:asgi_app --factory``; gunicorn:
``e2e_apps:wsgi_app()``) in each of its workers; the variant and where its data go come from
the environment (``E2E_*``, set by ``e2e_servers.py``), so every worker of one server builds
the same thing. The handler is the same small one everywhere: parse a JSON body, count the
execution, answer 201 with a JSON document (a Starlette route for ASGI, a Flask view for
WSGI).

Counting: each execution appends its key and a newline to the file ``E2E_COUNTER``
(``O_APPEND``: one short ``write`` lands whole, so workers in several processes can share the
file), and the driver counts the lines of a run's keys. Counting by key, not by the file's
growth during a run, charges a request still in flight when the load stopped to its own run
however late it finishes. One ``write`` per execution, in every variant alike, bare app
included.

Every variant's data are its own: Redis keys under ``be2e<tag><variant>:``, PostgreSQL tables
under ``be2e<tag>_...``, a SQLite file in the run's own directory (``E2E_DIR``), so a run never
touches the test suite's data; :func:`cleanup` removes them afterwards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
RESULT = {"id": "ch_1", "status": "ok"}


@dataclass(frozen=True)
class Variant:
    """One thing to measure: a store (or a peer) in front of the same handler."""

    name: str
    title: str
    doors: tuple[str, ...]  # "asgi", "wsgi": the servers it can run under
    store: str | None = None  # retrysafe's store kind ("memory", "sqlite", ...), None: no store
    cached: bool = False  # the local replay cache (CachedStore) in front of the store
    peer: str | None = None  # a peer library instead of retrysafe
    per_process: bool = False  # its records live in one process: one worker only
    replays: bool = True  # a replay run must not execute the handler (the bare app does)


VARIANTS = {
    v.name: v
    for v in [
        Variant("bare", "bare app", ("asgi", "wsgi"), replays=False),
        Variant("memory", "retrysafe, memory", ("asgi", "wsgi"), "memory", per_process=True),
        Variant("sqlite", "retrysafe, SQLite", ("asgi", "wsgi"), "sqlite"),
        Variant("redis", "retrysafe, Redis", ("asgi", "wsgi"), "redis"),
        Variant("postgres", "retrysafe, PostgreSQL", ("asgi", "wsgi"), "postgres"),
        Variant(
            "sqlite+cache", "retrysafe, SQLite + local cache", ("asgi", "wsgi"), "sqlite", True
        ),
        Variant("redis+cache", "retrysafe, Redis + local cache", ("asgi", "wsgi"), "redis", True),
        Variant(
            "postgres+cache",
            "retrysafe, PostgreSQL + local cache",
            ("asgi", "wsgi"),
            "postgres",
            True,
        ),
        Variant("idemkit-redis", "idemkit 1.0.2, Redis", ("asgi",), peer="idemkit-redis"),
        Variant(
            "idemkit-postgres", "idemkit 1.0.2, PostgreSQL", ("asgi",), peer="idemkit-postgres"
        ),
        Variant("aih-redis", "asgi-idempotency-header 0.2.0, Redis", ("asgi",), peer="aih-redis"),
    ]
}
DEFAULT_VARIANTS = [
    "bare",
    "memory",
    "sqlite",
    "redis",
    "postgres",
    "redis+cache",
    "idemkit-redis",
    "idemkit-postgres",
    "aih-redis",
]


# -- where a variant's data go ---------------------------------------------------------------


def redis_prefix(tag: str, variant: str) -> str:
    return f"be2e{tag}{re.sub(r'[^a-z0-9]', '', variant)}:"


def pg_prefix(tag: str, variant: str) -> str:
    return f"be2e{tag}_{re.sub(r'[^a-z0-9]', '', variant)}_"


def sqlite_path(run_dir: Path, variant: str) -> Path:
    return run_dir / f"{re.sub(r'[^a-z0-9]', '', variant)}.db"


# -- the handler's execution count ------------------------------------------------------------

_counter: list[int] = []  # the counter file's descriptor, opened once per process


def count_execution(key: str) -> None:
    if not _counter:
        _counter.append(os.open(os.environ["E2E_COUNTER"], os.O_WRONLY | os.O_APPEND))
    os.write(_counter[0], key.encode() + b"\n")


def executions(counter: Path, key: str | None = None, fresh: bool = False) -> int:
    """Executions of ``key`` (``fresh``: of the keys the load generator made from it, ``key``
    + ``-`` + a per-request suffix); None: of every key."""
    lines = counter.read_bytes().splitlines()
    if key is None:
        return len(lines)
    if fresh:
        start = key.encode() + b"-"
        return sum(1 for line in lines if line.startswith(start))
    exact = key.encode()
    return sum(1 for line in lines if line == exact)


# -- the stores ---------------------------------------------------------------------------------


def _store(variant: Variant, tag: str, run_dir: Path) -> Any:
    from retrysafe.stores.cached import CachedStore

    store: Any
    if variant.store == "memory":
        from retrysafe.stores.memory import MemoryStore

        store = MemoryStore()
    elif variant.store == "sqlite":
        from retrysafe.stores.sqlite import SQLiteStore

        store = SQLiteStore(sqlite_path(run_dir, variant.name))
    elif variant.store == "redis":
        from retrysafe.stores.redis import RedisStore

        store = RedisStore(REDIS_URL, prefix=redis_prefix(tag, variant.name))
    elif variant.store == "postgres":
        from retrysafe.stores.postgres import PostgresStore

        store = PostgresStore(POSTGRES_URL, table_prefix=pg_prefix(tag, variant.name))
    else:
        raise ValueError(f"no store kind {variant.store!r}")
    return CachedStore(store) if variant.cached else store


def _policy() -> Any:
    from retrysafe import Policy, shared_scope

    return Policy(scope=shared_scope)  # one caller: an explicit shared scope (as bench/peers.py)


def _from_env() -> tuple[Variant, str, Path]:
    return (
        VARIANTS[os.environ["E2E_VARIANT"]],
        os.environ["E2E_TAG"],
        Path(os.environ["E2E_DIR"]),
    )


# -- ASGI ---------------------------------------------------------------------------------------


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def charge(request: Request) -> JSONResponse:
        order = await request.json()
        count_execution(request.headers.get("idempotency-key", ""))
        return JSONResponse({**RESULT, "amount": order["amount"]}, status_code=201)

    return Starlette(routes=[Route("/charges", charge, methods=["POST"])])


def asgi_app() -> Any:
    """The ASGI app of the variant ``E2E_VARIANT`` (a factory: one call per worker)."""
    variant, tag, run_dir = _from_env()
    app = _starlette()
    if variant.peer is not None:
        return _PEERS[variant.peer](app, tag, variant.name)
    if variant.store is None:
        return app
    from retrysafe.http import ASGIIdempotencyMiddleware

    return ASGIIdempotencyMiddleware(app, store=_store(variant, tag, run_dir), policy=_policy())


def _idemkit(app: Any, backend: Any) -> Any:
    from idemkit import HttpConfig, IdempotencyMiddleware

    # single_tenant: no per-request "no scope configured" warning (one caller here).
    return IdempotencyMiddleware(
        app, backend=backend, config=HttpConfig(scope_mode="single_tenant")
    )


def _idemkit_redis(app: Any, tag: str, variant: str) -> Any:
    import redis.asyncio
    from idemkit.backends.redis import RedisBackend

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    return _idemkit(app, RedisBackend(client, namespace=redis_prefix(tag, variant).rstrip(":")))


def _idemkit_postgres(app: Any, tag: str, variant: str) -> Any:
    from idemkit.backends.postgres import PostgresBackend

    # Its pool as large as retrysafe's default (10), so neither wins by holding more connections.
    backend = PostgresBackend.from_url(
        POSTGRES_URL, table=_idemkit_table(tag, variant), min_size=1, max_size=10
    )
    return _idemkit(app, backend)


def _idemkit_table(tag: str, variant: str) -> str:
    return pg_prefix(tag, variant) + "records"


def _aih_redis(app: Any, tag: str, variant: str) -> Any:
    import redis.asyncio
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends.redis import RedisBackend

    prefix = redis_prefix(tag, variant)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    backend = RedisBackend(client, keys_key=f"{prefix}keys", response_key=f"{prefix}resp:")
    return IdempotencyHeaderMiddleware(app, backend=backend)


_PEERS: dict[str, Callable[[Any, str, str], Any]] = {
    "idemkit-redis": _idemkit_redis,
    "idemkit-postgres": _idemkit_postgres,
    "aih-redis": _aih_redis,
}


# -- WSGI ---------------------------------------------------------------------------------------


def wsgi_app() -> Any:
    """The WSGI app of the variant ``E2E_VARIANT`` (gunicorn calls it once per worker)."""
    import flask

    variant, tag, run_dir = _from_env()
    app = flask.Flask("e2e")

    @app.post("/charges")
    def charge() -> Any:
        order = flask.request.get_json()
        count_execution(flask.request.headers.get("Idempotency-Key", ""))
        return {**RESULT, "amount": order["amount"]}, 201

    if variant.store is not None:
        from retrysafe.http import WSGIIdempotencyMiddleware

        app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, store=_store(variant, tag, run_dir), policy=_policy()
        )
    return app


# -- before the servers start, after they stop -----------------------------------------------


def prepare(variant: Variant, tag: str, run_dir: Path) -> None:
    """Create what the variant's workers would otherwise race to create (schemas, tables);
    raises ImportError when its packages are missing from this environment."""
    if variant.peer is not None:
        import importlib

        module = {"idemkit": "idemkit", "aih": "idempotency_header_middleware"}
        importlib.import_module(module[variant.peer.split("-")[0]])
    if variant.peer == "idemkit-postgres":
        import asyncio

        from idemkit.backends.postgres import init_pg

        asyncio.run(init_pg(POSTGRES_URL, table=_idemkit_table(tag, variant.name)))
    elif variant.store in ("sqlite", "postgres"):
        store = _store(variant, tag, run_dir)  # creates the file or the schema
        store.close()


def cleanup(tag: str) -> None:
    """Remove every Redis key and PostgreSQL table this run made (best effort: a run that
    failed half-way still cleans up what it can)."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"be2e{tag}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:  # one UNLINK per batch: a run leaves ~10^5 keys
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        client.close()
    except Exception as exc:  # the server may be down: say so, go on
        print(f"cleanup: Redis keys under be2e{tag}* left: {exc}")
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename LIKE %s",
                (f"be2e{tag}%",),
            ).fetchall()
            for (table,) in tables:
                conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    except Exception as exc:
        print(f"cleanup: PostgreSQL tables be2e{tag}* left: {exc}")

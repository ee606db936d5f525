"""retrysafe next to its peers: per-request in-process time, first execution and replay.

    bench/.venv-peers/bin/python bench/peers.py [--n 1000] [--rounds 5] [--only a,b]

Runs in the peers' own venv (``bench/requirements-peers.txt`` plus ``pip install -e
'.[redis,postgres]'``), never in the project's dependencies. Every variant serves the same
bare ASGI app of ``bench/stores.py`` (read a 35-byte JSON body, answer 201 with a JSON
document) through raw ASGI calls on one event loop, one request after another: a *first*
execution uses a new key each request, a *replay* one key already completed. Variants take
turns round by round (a noisy neighbour hits all of them alike); each figure is the median
over rounds of the per-round median request time, wall clock, in microseconds, and the
``× idemkit`` column is the median of the per-round ratios.

``retrysafe-redis-cached`` is retrysafe on Redis behind the local replay cache
(``stores/cached.py``): its replays come from process memory, so compare them with the bare
app rather than with the floor.

Peers (issue 3 "Performance"), each with its own Redis key prefix / PostgreSQL table:

- idemkit 1.0.2: ``idemkit.IdempotencyMiddleware`` on ``RedisBackend`` (redis.asyncio).
- asgi-idempotency-header 0.2.0: ``IdempotencyHeaderMiddleware`` on its ``RedisBackend``.
- aws-lambda-powertools 3.37: ``idempotent_function`` with ``CachePersistenceLayer`` (its
  Redis layer, sync redis-py): the function computes the response, the app around it is the
  bare app's shape.
- exactly-once 0.2.1: ``@once`` on an async function with its ``RedisStore`` (redis.asyncio).
- fastapi-idempotency 0.1.1: ``IdempotencyMiddleware`` on ``TortoiseStore`` (PostgreSQL via
  Tortoise ORM + asyncpg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stores import POSTGRES_URL, REDIS_URL, app, call, floor_trip

One = Callable[[int], Awaitable[object]]
Closer = Callable[[], Awaitable[None]]
RESULT = {"id": "ch_1", "status": "ok"}
TAG = uuid.uuid4().hex[:8]
RUNS = [0]  # handler executions: the set-up check proves a replay does not run the handler


async def counted_app(scope: Any, receive: Any, send: Any) -> None:
    """The bare app, counting its runs (one list increment: well under a microsecond)."""
    RUNS[0] += 1
    await app(scope, receive, send)


async def json_app(handler: Callable[[str, bytes], Awaitable[dict[str, Any]]]) -> Any:
    """The bare app's shape with the response computed by ``handler(key, body)``: for peers
    that guard a function rather than wrap an ASGI app."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        result = await handler(key, body)
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(result).encode()})

    return asgi


# -- variants: each returns (asgi app, closer) --------------------------------------------


async def retrysafe_redis(cached: bool = False) -> tuple[Any, Closer]:
    """retrysafe on Redis; ``cached`` puts the local replay cache in front (``CachedStore``): a
    replay of a key this process completed or replayed before then makes no round trip."""
    from retrysafe import Policy, shared_scope
    from retrysafe.http import ASGIIdempotencyMiddleware
    from retrysafe.stores.cached import CachedStore
    from retrysafe.stores.redis import RedisStore

    store = RedisStore(REDIS_URL, prefix=f"bpeers{'c' if cached else ''}{TAG}:")

    async def close() -> None:
        client = store.client
        for key in client.scan_iter(match=f"{store.prefix}*", count=1000):
            client.delete(key)
        await store.aclose()

    # One caller here, like idemkit's single_tenant below: an explicit shared scope.
    policy = Policy(scope=shared_scope)
    store = CachedStore(store) if cached else store
    return ASGIIdempotencyMiddleware(counted_app, store=store, policy=policy), close


async def retrysafe_postgres() -> tuple[Any, Closer]:
    from retrysafe import Policy, shared_scope
    from retrysafe.http import ASGIIdempotencyMiddleware
    from retrysafe.stores.postgres import PostgresStore

    store = PostgresStore(POSTGRES_URL, table_prefix=f"bpeers{TAG}_")

    async def close() -> None:
        store.drop_schema()
        await store.aclose()

    policy = Policy(scope=shared_scope)  # one caller here: an explicit shared scope
    return ASGIIdempotencyMiddleware(counted_app, store=store, policy=policy), close


async def idemkit_redis() -> tuple[Any, Closer]:
    import redis.asyncio
    from idemkit import HttpConfig, IdempotencyMiddleware
    from idemkit.backends.redis import RedisBackend

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    namespace = f"bidemkit{TAG}"
    backend = RedisBackend(client, namespace=namespace)
    # single_tenant: no per-request "no scope configured" warning (one caller here).
    asgi = IdempotencyMiddleware(
        counted_app, backend=backend, config=HttpConfig(scope_mode="single_tenant")
    )

    async def close() -> None:
        async for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            await client.delete(key)
        await client.aclose()

    return asgi, close


async def asgi_idempotency_header_redis() -> tuple[Any, Closer]:
    import redis.asyncio
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends.redis import RedisBackend

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    prefix = f"baih{TAG}:"
    backend = RedisBackend(client, keys_key=f"{prefix}keys", response_key=f"{prefix}resp:")
    asgi = IdempotencyHeaderMiddleware(counted_app, backend=backend)

    async def close() -> None:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()

    return asgi, close


async def powertools_redis() -> tuple[Any, Closer]:
    import redis
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        CachePersistenceLayer,
    )

    client = redis.Redis.from_url(REDIS_URL)
    persistence = CachePersistenceLayer(client=client)
    prefix = f"bpt{TAG}"

    @idempotent_function(
        data_keyword_argument="request",
        persistence_store=persistence,
        config=IdempotencyConfig(event_key_jmespath="key"),
        key_prefix=prefix,
    )
    def charge(request: dict[str, Any]) -> dict[str, Any]:
        RUNS[0] += 1
        json.loads(request["body"])
        return RESULT

    async def handler(key: str, body: bytes) -> dict[str, Any]:
        # Sync redis-py on the loop thread, as a sync function is called in Lambda.
        result: dict[str, Any] = charge(request={"key": key, "body": body.decode()})
        return result

    async def close() -> None:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()

    return await json_app(handler), close


async def exactly_once_redis() -> tuple[Any, Closer]:
    from exactly_once import once
    from exactly_once.stores.redis import RedisStore

    prefix = f"beo{TAG}:"
    store = RedisStore(REDIS_URL, prefix=prefix)

    @once(store, key=lambda key, body: key)
    async def charge(key: str, body: bytes) -> dict[str, Any]:
        RUNS[0] += 1
        json.loads(body)
        return RESULT

    async def close() -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
        await store.aclose()

    return await json_app(charge), close


async def fastapi_idempotency_postgres() -> tuple[Any, Closer]:
    from fastapi_idempotency import IdempotencyMiddleware
    from fastapi_idempotency.stores.tortoise import TortoiseStore
    from tortoise import Tortoise, connections

    # Its model's table name is fixed (fastapi_idempotency_requests): a schema of our own
    # keeps it apart from anything else in the database.
    schema = f"bfi{TAG}"
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = POSTGRES_URL.replace("postgresql://", "asyncpg://", 1)
    await Tortoise.init(
        config={
            "connections": {
                "default": {
                    "engine": "tortoise.backends.asyncpg",
                    "credentials": _asyncpg_credentials(dsn, schema),
                }
            },
            "apps": {"models": {"models": ["fastapi_idempotency.stores.tortoise"]}},
        }
    )
    await Tortoise.generate_schemas(safe=True)
    asgi = IdempotencyMiddleware(counted_app, store=TortoiseStore())

    async def close() -> None:
        await connections.close_all()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return asgi, close


def _asyncpg_credentials(dsn: str, schema: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    u = urlsplit(dsn)
    return {
        "host": u.hostname,
        "port": u.port or 5432,
        "user": u.username or "postgres",
        "password": u.password or "",
        "database": u.path.lstrip("/"),
        "schema": schema,
        "minsize": 1,
        "maxsize": 10,
    }


VARIANTS: dict[str, tuple[str, Callable[[], Awaitable[tuple[Any, Closer]]]]] = {
    "retrysafe-redis": ("retrysafe, Redis", retrysafe_redis),
    "retrysafe-redis-cached": (
        "retrysafe, Redis + local replay cache",
        lambda: retrysafe_redis(cached=True),
    ),
    "retrysafe-postgres": ("retrysafe, PostgreSQL", retrysafe_postgres),
    "idemkit": ("idemkit 1.0.2, Redis", idemkit_redis),
    "asgi-idempotency-header": (
        "asgi-idempotency-header 0.2.0, Redis",
        asgi_idempotency_header_redis,
    ),
    "powertools": ("aws-lambda-powertools 3.37 idempotent_function, Redis", powertools_redis),
    "exactly-once": ("exactly-once 0.2.1, Redis", exactly_once_redis),
    "fastapi-idempotency": (
        "fastapi-idempotency 0.1.1, PostgreSQL (Tortoise)",
        fastapi_idempotency_postgres,
    ),
}


async def median_us(n: int, one: One, offset: int) -> float:
    samples = []
    for i in range(n):
        started = time.perf_counter_ns()
        await one(offset + i)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def checked(asgi: Any, key: str, want: int = 201) -> None:
    status = await call(asgi, key)
    if status != want:
        raise RuntimeError(f"expected {want}, got {status}")


async def run(n: int, rounds: int, only: list[str]) -> None:
    run_id = uuid.uuid4().hex[:12]
    apps: dict[str, Any] = {}
    closers: list[Closer] = []
    failed: dict[str, str] = {}
    for name in only:
        try:
            asgi, close = await VARIANTS[name][1]()
            closers.append(close)
            before = RUNS[0]
            await checked(asgi, f"{run_id}-replayed")
            await checked(asgi, f"{run_id}-replayed")  # a replay answers the stored 201
            await checked(asgi, f"{run_id}-other")
            if RUNS[0] - before != 2:
                raise RuntimeError(f"3 requests, 2 keys: handler ran {RUNS[0] - before} times")
            apps[name] = asgi
        except Exception as exc:  # a peer that does not install or fit: say so, go on
            failed[name] = f"{type(exc).__name__}: {exc}"
    redis_trip, close_redis = await floor_trip("redis")
    pg_trip, close_pg = await floor_trip("postgres")

    def floor(trip: Callable[[], Awaitable[object]], trips: int, with_app: bool) -> One:
        async def one(i: int) -> object:
            for _ in range(trips):
                await trip()
            return await call(counted_app, "x") if with_app else None

        return one

    cases: dict[str, One] = {
        "bare app": lambda i: call(counted_app, "x"),
        "floor Redis first": floor(redis_trip, 2, True),
        "floor Redis replay": floor(redis_trip, 1, False),
        "floor PostgreSQL first": floor(pg_trip, 2, True),
        "floor PostgreSQL replay": floor(pg_trip, 1, False),
    }
    for name, asgi in apps.items():
        cases[f"{name} first"] = lambda i, a=asgi: call(a, f"{run_id}-{i}")
        cases[f"{name} replay"] = lambda i, a=asgi: call(a, f"{run_id}-replayed")

    per_round: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(rounds + 1):  # round 0 warms up (connections, scripts, statements)
        for case, one in cases.items():
            figure = await median_us(n if r else min(n, 200), one, (r + 1) * 10_000_000)
            if r:
                per_round[case].append(figure)
    await close_redis()
    await close_pg()
    for close in closers:
        await close()

    def ratio(case: str, base: str) -> str:
        if base not in per_round:
            return "–"
        pairs = zip(per_round[case], per_round[base], strict=True)
        return f"{statistics.median(a / b for a, b in pairs):.2f}"

    print(f"n={n} requests per round, {rounds} rounds; median µs/request (wall)")
    print("| variant | first µs | replay µs | first × idemkit | replay × idemkit |")
    print("|---|---:|---:|---:|---:|")
    print(f"| bare app | {statistics.median(per_round['bare app']):.0f} | – | – | – |")
    for store in ("Redis", "PostgreSQL"):
        f, p = f"floor {store} first", f"floor {store} replay"
        print(
            f"| floor: bare app + 2 / 1 {store} round trips | "
            f"{statistics.median(per_round[f]):.0f} | {statistics.median(per_round[p]):.0f} | "
            f"{ratio(f, 'idemkit first')} | {ratio(p, 'idemkit replay')} |"
        )
    for name in apps:
        f, p = f"{name} first", f"{name} replay"
        print(
            f"| {VARIANTS[name][0]} | {statistics.median(per_round[f]):.0f} | "
            f"{statistics.median(per_round[p]):.0f} | {ratio(f, 'idemkit first')} | "
            f"{ratio(p, 'idemkit replay')} |"
        )
    for name, why in failed.items():
        print(f"| {VARIANTS[name][0]} | did not run: {why} | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    asyncio.run(run(args.n, args.rounds, args.only.split(",")))


if __name__ == "__main__":
    main()

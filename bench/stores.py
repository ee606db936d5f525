"""Per-request time through the ASGI middleware, in-process, for each store.

    python bench/stores.py [--n 2000] [--stores memory,sqlite,redis,postgres]

For each store: a *first* execution (a new key each request: claim + handler + complete) and a
*replay* (the same key again: one claim). Next to them, the floor: the bare app without the
middleware, plus one (replay) or two (first) raw round trips to the same server with the same
driver (Redis ``PING``, PostgreSQL ``SELECT 1``). Requests are raw ASGI calls (no HTTP client
in the way), run one after another on one event loop. Figures are medians in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from retrysafe import Policy, shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores import DualStore

REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BODY = b'{"amount": 1000, "currency": "eur"}'


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"id": "ch_1", "status": "ok"}'})


def scope(key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "query_string": b"",
        "headers": [
            (b"idempotency-key", key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
    }


async def call(asgi: Any, key: str) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await asgi(scope(key), receive, send)
    return status


async def timed(n: int, one: Callable[[int], Awaitable[object]]) -> float:
    for i in range(min(200, n)):  # warm-up: connections, scripts, prepared statements
        await one(-1 - i)
    samples = []
    for i in range(n):
        started = time.perf_counter_ns()
        await one(i)
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


async def floor_trip(kind: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Any]]:
    """One raw round trip to the server with the same driver, and a closer."""
    if kind == "redis":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(REDIS_URL.split("?")[0])
        return client.ping, client.aclose
    if kind == "postgres":
        import psycopg

        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL.split("?")[0], autocommit=True)

        async def select() -> object:
            return await (await conn.execute("SELECT 1", prepare=True)).fetchone()

        return select, conn.close

    async def nothing() -> object:
        return None

    async def close() -> None:
        return None

    return nothing, close


def open_kind(kind: str, tmp: str) -> DualStore:
    tag = uuid.uuid4().hex[:8]
    if kind == "memory":
        from retrysafe.stores.memory import MemoryStore

        return MemoryStore()
    if kind == "sqlite":
        from retrysafe.stores.sqlite import SQLiteStore

        return SQLiteStore(os.path.join(tmp, "bench.db"))
    if kind == "redis":
        from retrysafe.stores.redis import RedisStore

        return RedisStore(REDIS_URL, prefix=f"bench{tag}:")
    from retrysafe.stores.postgres import PostgresStore

    return PostgresStore(POSTGRES_URL, table_prefix=f"bench{tag}_")


async def close_kind(kind: str, store: DualStore) -> None:
    """Drop what ``open_kind`` made on a server (the schema, the keys), then close."""
    if kind == "postgres":
        store.drop_schema()  # type: ignore[attr-defined]
    elif kind == "redis":
        store.drop_keys()  # type: ignore[attr-defined]
    await store.aclose()


async def bench(kind: str, n: int, tmp: str) -> dict[str, float]:
    store = open_kind(kind, tmp)
    # One caller (the load script): an explicit shared scope.
    asgi = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    run = uuid.uuid4().hex
    await call(asgi, f"{run}-replayed")
    trip, close_trip = await floor_trip(kind)

    async def bare(i: int) -> object:
        return await call(app, "x")

    async def floor_first(i: int) -> object:
        await trip()
        await call(app, "x")
        return await trip()

    async def floor_replay(i: int) -> object:
        return await trip()  # a replay does not run the app

    async def first(i: int) -> object:
        return await call(asgi, f"{run}-{i}")

    async def replay(i: int) -> object:
        return await call(asgi, f"{run}-replayed")

    figures = {
        "bare app": await timed(n, bare),
        "floor first": await timed(n, floor_first),
        "floor replay": await timed(n, floor_replay),
        "first": await timed(n, first),
        "replay": await timed(n, replay),
    }
    await close_trip()
    await close_kind(kind, store)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--stores", default="memory,sqlite,redis,postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {kind: asyncio.run(bench(kind, args.n, tmp)) for kind in args.stores.split(",")}
    columns = ["bare app", "floor first", "first", "floor replay", "replay"]
    print(f"{'store':10}" + "".join(f"{c:>14}" for c in columns) + "   (median µs)")
    for kind, figures in rows.items():
        print(f"{kind:10}" + "".join(f"{figures[c]:14.0f}" for c in columns))


if __name__ == "__main__":
    main()

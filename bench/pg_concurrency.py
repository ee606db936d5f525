"""The PostgreSQL store's async path under concurrency, in one process (issue 17).

    python bench/pg_concurrency.py [--tasks 10,100] [--ops 4000] [--door store,asgi]

``--tasks`` asyncio tasks share one event loop and one store and run ``--ops`` operations in
all: *first* (a new key: claim + complete, what a first execution costs the store) and
*replay* (one completed key claimed again: what a replay costs). ``store`` calls the store
directly; ``asgi`` sends raw ASGI requests through ``ASGIIdempotencyMiddleware`` (no HTTP
client or server in the way). Reported: operations/s, p50/p99 latency, store calls per
operation (``retrysafe.testing.RecordingStore``), this process's CPU time per operation (the
cost to a served worker, which is CPU-bound under load; the database's own processes are not
counted), and the load average at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from retrysafe import Policy, shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores import Claimed, StoredResponse
from retrysafe.stores.postgres import PostgresStore
from retrysafe.testing import RecordingStore

POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
OK = StoredResponse(201, (("content-type", "application/json"),), b'{"id": "ch_1"}')
BODY = b'{"amount": 1000}'
SERIAL = itertools.count()  # key numbers, unique across runs


def cpu() -> float:
    """CPU seconds of this process (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b'{"id": "ch_1"}'})


async def asgi_call(handler: Any, key: str) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "query_string": b"",
        "headers": [(b"idempotency-key", key.encode()), (b"content-length", b"16")],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await handler(scope, receive, send)


async def run(
    tasks: int, ops: int, op: Callable[[int], Awaitable[None]]
) -> tuple[float, float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(ops))

    async def worker() -> None:
        for _ in counter:
            start = time.perf_counter()
            await op(next(SERIAL))
            latencies.append(time.perf_counter() - start)

    start, used = time.perf_counter(), cpu()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - start, cpu() - used, latencies


async def main_async(args: argparse.Namespace) -> None:
    inner = PostgresStore(f"{POSTGRES_URL}?table_prefix=bench_conc_", pool_size=args.pool_size)
    store = RecordingStore(inner)
    handler = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    run_id = uuid.uuid4().hex[:8]
    replay_key = f"replay-{run_id}"
    claimed = await store.aclaim(replay_key, "fp", 30.0)
    assert isinstance(claimed, Claimed)
    await store.acomplete(replay_key, claimed.token, OK, 3600.0, 3600.0)
    await asgi_call(handler, replay_key)  # the middleware's own record of the replay key

    async def store_first(n: int) -> None:
        key = f"first-{run_id}-{n}"
        result = await store.aclaim(key, "fp", 30.0)
        assert isinstance(result, Claimed)
        await store.acomplete(key, result.token, OK, 3600.0, 3600.0)

    async def store_replay(n: int) -> None:
        result = await store.aclaim(replay_key, "fp", 30.0)
        assert not isinstance(result, Claimed)

    async def asgi_first(n: int) -> None:
        await asgi_call(handler, f"afirst-{run_id}-{n}")

    async def asgi_replay(n: int) -> None:
        await asgi_call(handler, replay_key)

    cases = {
        "store": (("first", store_first), ("replay", store_replay)),
        "asgi": (("first", asgi_first), ("replay", asgi_replay)),
    }
    print(f"pool_size={args.pool_size} ops={args.ops}")
    print("door  | case   | tasks |   ops/s |  p50 ms |  p99 ms | calls/op | CPU µs/op")
    for door in args.door.split(","):
        for tasks in (int(t) for t in args.tasks.split(",")):
            for name, op in cases[door]:
                await run(tasks, min(200, args.ops), op)  # warm: connections, statements
                store.reset()
                wall, used, lat = await run(tasks, args.ops, op)
                calls = sum(store.reset().calls.values())
                lat.sort()
                print(
                    f"{door:5} | {name:6} | {tasks:5} | {args.ops / wall:7.0f} | "
                    f"{statistics.median(lat) * 1e3:7.2f} | "
                    f"{lat[int(len(lat) * 0.99)] * 1e3:7.2f} | {calls / args.ops:8.2f} | "
                    f"{used / args.ops * 1e6:9.0f}"
                )
    print(f"load average {os.getloadavg()[0]:.2f}")
    inner.drop_schema()
    await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="10,100")
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--door", default="store,asgi")
    parser.add_argument("--pool-size", type=int, default=10)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

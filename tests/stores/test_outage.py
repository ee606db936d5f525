"""Store servers that are down (SPEC 17): no server at all, and one killed mid-run.

Where nothing listens, every operation answers StoreUnavailable (chained to the driver's
error) in bounded time instead of hanging, on both faces. A killed server is our own (a
redis-server with an fsync-always AOF, or a throwaway PostgreSQL cluster), never the shared
one: requests go through the ASGI middleware in-process while a background stream of keyed
requests keeps running. While the server is down every request gets the 503 problem (it never
hangs) and no handler runs; afterwards the same store object serves again, completed keys
replay, and no key ever executes twice.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.store_servers import (
    PostgresServer,
    RedisServer,
    free_port,
    postgres_available,
    redis_available,
    require,
)
from kit.wakes import HANG, NEVER
from retrysafe import Policy
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.postgres import PostgresStore
from retrysafe.stores.redis import RedisStore


def _dead_stores() -> list[object]:
    port = free_port()  # nothing listens there
    return [
        RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.5, connect_timeout=0.5),
        PostgresStore(
            f"postgresql://u@127.0.0.1:{port}/db", timeout=0.5, pool_timeout=0.5, listen=False
        ),
    ]


def _raised_in_time(call: Callable[[], object]) -> BaseException | None:
    """What ``call()`` raised, run in a thread; a call still running after HANG is a hang."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).exception(timeout=HANG)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize("index", [0, 1], ids=["redis", "postgres"])
def test_no_server_answers_store_unavailable_instead_of_hanging(index):
    store = _dead_stores()[index]
    caught = _raised_in_time(lambda: store.claim("k", "fp", 60))  # type: ignore[attr-defined]
    assert isinstance(caught, StoreUnavailable), caught
    assert caught.__cause__ is not None  # the backend error stays visible
    store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("index", [0, 1], ids=["redis", "postgres"])
async def test_no_server_answers_store_unavailable_instead_of_hanging_async(index):
    store = _dead_stores()[index]
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.aclaim("k", "fp", 60), HANG)  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable):  # the timeout would be NEVER: only the error ends it
        await asyncio.wait_for(store.awatch("k", NEVER), HANG)  # type: ignore[attr-defined]
    await store.aclose()  # type: ignore[attr-defined]


class Server:
    kill: Any
    start: Any
    url: str


@pytest.fixture(params=["redis", "postgres"])
def server_and_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    store: Any
    server: Any
    if request.param == "redis":
        require("redis-server", redis_available())
        server = RedisServer(
            tmp_path / "redis", free_port(), "--appendonly", "yes", "--appendfsync", "always"
        ).start()
        store = RedisStore(server.url, prefix="o:", timeout=1.0, connect_timeout=0.5)
    else:
        require("PostgreSQL binaries", postgres_available())
        try:
            server = PostgresServer()
            server.init().start()
        except Exception as exc:  # e.g. no runuser, or initdb refusing this environment
            require("a throwaway PostgreSQL cluster", f"{type(exc).__name__}: {exc}")
        store = PostgresStore(server.url, timeout=1.0, connect_timeout=2.0, pool_timeout=1.0)
    try:
        yield server, store
    finally:
        store.close()
        if isinstance(server, PostgresServer):
            server.remove()
        else:
            server.kill()


async def test_kill_and_restart_the_store_server_mid_run(server_and_store):
    server, store = server_and_store
    runs: collections.Counter[str] = collections.Counter()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        runs[key] += 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": f"done {key}".encode()})

    policy = Policy(scope=shared_scope, wait=timedelta(seconds=0.5))
    transport = httpx.ASGITransport(app=ASGIIdempotencyMiddleware(app, store=store, policy=policy))
    answers: collections.Counter[int] = collections.Counter()

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def post(key: str) -> httpx.Response:
            # Every answer comes, outage or not: HANG only catches one that never does.
            request = client.post("/pay", headers={"Idempotency-Key": key})
            response = await asyncio.wait_for(request, HANG)
            answers[response.status_code] += 1
            if response.status_code == 503:
                assert response.headers["content-type"] == "application/problem+json"
                assert "retry-after" in response.headers
            return response

        stop = asyncio.Event()

        async def background() -> None:  # keyed traffic that runs through the outage
            i = 0
            while not stop.is_set():
                key = f"bg{i}"
                for _ in range(2):
                    await post(key)
                i += 1
                await asyncio.sleep(0.01)

        stream = asyncio.create_task(background())
        for i in range(5):
            assert (await post(f"a{i}")).status_code == 201
            assert (await post(f"a{i}")).headers.get("idempotent-replayed") == "true"

        await asyncio.to_thread(server.kill)
        down_at = time.monotonic()
        for key in ["a0", "b0", "b1"]:
            assert (await post(key)).status_code == 503
        assert runs["b0"] == runs["b1"] == 0
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - down_at)))

        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 2 * HANG  # a loaded machine restarts PostgreSQL slowly
        while (await post(f"probe-{uuid.uuid4().hex}")).status_code != 201:
            assert time.monotonic() < deadline, "service did not resume after the restart"
            await asyncio.sleep(0.1)

        async def settled(key: str) -> httpx.Response:
            # A loaded machine may still time out a command now and then (a defined 503);
            # a client retries those, as it would in production.
            for _ in range(20):
                response = await post(key)
                if response.status_code != 503:
                    return response
                await asyncio.sleep(0.1)
            return response

        for i in range(5):
            replay = await settled(f"a{i}")
            assert replay.status_code == 201
            assert replay.headers.get("idempotent-replayed") == "true"
            assert (await settled(f"b{i}")).status_code == 201
            assert (await settled(f"b{i}")).headers.get("idempotent-replayed") == "true"
        stop.set()
        await stream

    assert set(answers) <= {201, 409, 503}, answers
    assert answers[503] >= 3
    duplicates = {key: n for key, n in runs.items() if n > 1}
    assert not duplicates, f"executed more than once: {duplicates}"
    assert all(runs[f"a{i}"] == 1 and runs[f"b{i}"] == 1 for i in range(5))

"""One transport shared by threads and by asyncio tasks: keys, retries and derivation stay apart."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict

import httpx

from retrysafe import derive_key
from retrysafe._context import key_scope
from retrysafe.client import (
    AsyncIdempotentTransport,
    CircuitBreaker,
    IdempotentTransport,
    RetryBudget,
    RetryPolicy,
    State,
)

NO_WAIT = RetryPolicy(base=0.0, cap=0.0)


class FirstAttemptFails:
    """503 on the first attempt of every key, 201 after; counts attempts per key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, list[bytes]] = defaultdict(list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        with self.lock:
            self.by_key[key].append(request.content)
            first = len(self.by_key[key]) == 1
        return httpx.Response(503 if first else 201, content=request.content)


def test_threads_sharing_a_transport_keep_their_keys_apart() -> None:
    net = FirstAttemptFails()
    # Half the attempts fail: a real breaker would open, so this one only watches.
    breaker = CircuitBreaker(metrics_only=True)
    transport = IdempotentTransport(
        httpx.MockTransport(net),
        retry=NO_WAIT,
        budget=RetryBudget(ratio=1.0, floor=1000.0, burst=1000.0),
        breaker=breaker,
        rng=random.Random(3),
    )
    client = httpx.Client(transport=transport)
    results: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            body = f'{{"worker": {n}, "i": {i}}}'.encode()
            response = client.post("http://api.test/charges", content=body)
            assert response.status_code == 201
            with lock:
                results.append((response.extensions["retrysafe"].key, response.content))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    client.close()
    assert len(results) == 200
    assert len({key for key, _ in results}) == 200
    for key, body in results:
        assert net.by_key[key] == [body, body]  # two attempts, same bytes, own key
    assert breaker.state("api.test") is State.OPEN  # it saw the 50 % failure rate


async def test_tasks_sharing_a_transport_keep_their_keys_apart() -> None:
    net = FirstAttemptFails()
    transport = AsyncIdempotentTransport(
        httpx.MockTransport(net),
        retry=NO_WAIT,
        budget=RetryBudget(ratio=1.0, floor=1000.0, burst=1000.0),
    )
    async with httpx.AsyncClient(transport=transport) as client:

        async def one(i: int) -> tuple[str, bytes]:
            response = await client.post("http://api.test/charges", json={"i": i})
            return response.extensions["retrysafe"].key, response.content

        results = await asyncio.gather(*(one(i) for i in range(200)))
    assert len({key for key, _ in results}) == 200
    for key, body in results:
        assert net.by_key[key] == [body, body]


async def test_derived_keys_follow_each_tasks_own_scope() -> None:
    seen: dict[str, list[str]] = defaultdict(list)

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.headers["x-parent"]].append(request.headers["idempotency-key"])
        return httpx.Response(201)

    transport = AsyncIdempotentTransport(httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:

        async def tool(parent: str) -> None:
            with key_scope(parent):
                for _ in range(3):
                    await client.post("http://api.test/x", headers={"x-parent": parent})
                    await asyncio.sleep(0)  # interleave with the other tasks

        await asyncio.gather(*(tool(f"run-{i}") for i in range(20)))
    for parent, keys in seen.items():
        assert keys == [derive_key(parent, str(n)) for n in (1, 2, 3)]

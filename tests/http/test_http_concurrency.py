"""Fifty concurrent duplicates with one key run the handler exactly once (SPEC 7, 10).

Under ASGI the duplicates are asyncio tasks on one loop; under WSGI they are 50 threads
released together by a barrier. The first handler blocks until every other duplicate is
waiting on the store (seen through the spy store), so the duplicates truly overlap it.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from kit.doors import SpyStore
from kit.stores import FAR
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware

N = 50
BODY = b'{"amount": 100}'


def _policy(kit: Any) -> Policy:
    # The wait bound is real time; it only has to outlast the test's own coordination.
    return Policy(scope=shared_scope, ttl=FAR * kit.tick, lease=FAR * kit.tick, wait=20.0)


async def test_50_concurrent_duplicates_run_the_asgi_handler_once(kit):
    store = SpyStore(kit.store)
    release = asyncio.Event()
    entered = asyncio.Event()
    runs = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal runs
        while (await receive()).get("more_body"):
            pass
        runs += 1
        entered.set()
        await release.wait()
        body = f'{{"run": {runs}}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    mw = ASGIIdempotencyMiddleware(app, store=store, policy=_policy(kit))

    async def one() -> tuple[int, bytes, bool]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/pay",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"same-key"), (b"content-length", b"15")],
        }
        messages = [{"type": "http.request", "body": BODY}]
        disconnect = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await disconnect.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mw(scope, receive, send)
        disconnect.set()
        headers = dict(sent[0]["headers"])
        return sent[0]["status"], sent[1]["body"], headers.get(b"idempotent-replayed") == b"true"

    tasks = [asyncio.create_task(one()) for _ in range(N)]
    await asyncio.wait_for(entered.wait(), 20)
    await store.until("watch", N - 1, timeout=20)  # every duplicate is waiting on the first
    assert runs == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert runs == 1
    assert {status for status, _, _ in results} == {201}
    assert {body for _, body, _ in results} == {b'{"run": 1}'}
    assert sum(replayed for _, _, replayed in results) == N - 1


def test_50_threads_of_duplicates_run_the_wsgi_handler_once(kit):
    store = SpyStore(kit.store)
    release = threading.Event()
    entered = threading.Event()
    runs = 0
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal runs
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        with lock:
            runs += 1
            run = runs
        entered.set()
        assert release.wait(20)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [f'{{"run": {run}}}'.encode()]

    mw = WSGIIdempotencyMiddleware(app, store=store, policy=_policy(kit))
    barrier = threading.Barrier(N)
    results: list[tuple[str, bytes, bool]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/pay",
                "QUERY_STRING": "",
                "CONTENT_LENGTH": str(len(BODY)),
                "HTTP_IDEMPOTENCY_KEY": "same-key",
                "wsgi.input": io.BytesIO(BODY),
            }
            started: list[tuple[str, list[tuple[str, str]]]] = []

            def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
                started.append((status, headers))

            barrier.wait(20)
            result = mw(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                getattr(result, "close", lambda: None)()
            status, headers = started[0]
            replayed = ("idempotent-replayed", "true") in headers
            with lock:
                results.append((status, body, replayed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(N)]
    for thread in threads:
        thread.start()
    assert entered.wait(20)
    assert store.wait_for("watch", N - 1, timeout=20)
    with lock:
        assert runs == 1
    release.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert runs == 1
    assert len(results) == N
    assert {status for status, _, _ in results} == {"201 Created"}
    assert {body for _, body, _ in results} == {b'{"run": 1}'}
    assert sum(replayed for _, _, replayed in results) == N - 1

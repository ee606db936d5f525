"""PostgreSQL drops a served app's connections while requests are in the middle of their work.

The store's request path pipelines the statements of many requests on a few connections
(stores/_pg_pipeline.py), so one dropped connection meets several requests at once. Each must
fail closed on its own (a completion that cannot be saved is retried, then answered 503, never
taken for done), none may receive another's answer, the next statements reconnect, and a
retry of every key ends in exactly one run of its handler. Driven through uvicorn, with the
drop triggered by events (every handler has started, holding its claim), not by time.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from kit.servers import serve_asgi
from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.postgres import PostgresStore

WAIT = 30.0  # bounds a hang only
REQUESTS = 12


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    prefix = f"cd{uuid.uuid4().hex[:10]}_"
    opened = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=3)
    try:
        yield opened
    finally:
        opened.drop_schema()
        opened.close()


class Charges:
    """Each run charges its key once; runs wait at ``gate`` until the test opens it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.runs: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._started = threading.Condition(self._lock)

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        with self._started:
            self.runs[key] += 1
            self._started.notify_all()
        # Off the loop: the loop stays free for the other requests while this one waits.
        assert await asyncio.to_thread(self.gate.wait, WAIT)
        body = f'{{"charged":"{key}"}}'.encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def wait_started(self, count: int) -> None:
        with self._started:
            assert self._started.wait_for(lambda: sum(self.runs.values()) >= count, WAIT)


class CountingStore:
    """The real store, counting the completions that failed (the drop was met)."""

    def __init__(self, inner: PostgresStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.failed_completions = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def acomplete(self, *args: Any) -> bool:
        try:
            return await self.inner.acomplete(*args)
        except StoreUnavailable:
            self.failed_completions += 1
            raise


def drop_connections(store: PostgresStore) -> int:
    """Terminate every server process that served this store's table; how many there were."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE %s",
            (f"%{store.sql.table_name}%",),
        ).fetchall()
        gone = (
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()"
        )
        for _ in range(100_000):  # counted polls: terminated processes leave promptly
            row = admin.execute(gone, (f"%{store.sql.table_name}%",)).fetchone()
            if row is not None and row[0] == 0:
                break
    return len(rows)


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/charges", content=b"{}", headers={"Idempotency-Key": key}, timeout=WAIT
    )


def test_dropped_connections_fail_closed_and_every_key_runs_once(store: PostgresStore) -> None:
    app = Charges()
    policy = Policy(scope=shared_scope, wait=0)
    keys = [f"drop-{i}" for i in range(REQUESTS)]
    counted = CountingStore(store)
    with serve_asgi(ASGIIdempotencyMiddleware(app.asgi, store=counted, policy=policy)) as url:
        with ThreadPoolExecutor(REQUESTS) as pool:
            pending = [pool.submit(post, url, key) for key in keys]
            app.wait_started(REQUESTS)  # every request holds its claim; none has completed
            assert drop_connections(store) >= 1
            app.gate.set()  # the completions now meet the dropped connections
            answers = [future.result() for future in pending]
        for answer in answers:
            # Saved on a new connection (201), or, if it could not be, a 503 problem: never a
            # 500, never a neighbour's body.
            assert answer.status_code in (201, 503), answer.text
            if answer.status_code == 503:
                assert answer.headers["content-type"] == "application/problem+json"
        for key, answer in zip(keys, answers, strict=True):
            if answer.status_code == 201:
                assert answer.json() == {"charged": key}
        # Every key, retried, is answered with its own charge, and no handler ran twice.
        retried = {key: post(url, key) for key in keys}
    # The drop was met: completions failed on the dropped connections (and were retried).
    assert counted.failed_completions >= 1
    for key, answer in retried.items():
        assert answer.status_code == 201, (key, answer.text)
        assert answer.json() == {"charged": key}
    assert app.runs == Counter(dict.fromkeys(keys, 1))

"""Django under ASGI behind the atomic middleware, served by uvicorn (SPEC 13a): sync views
(asgiref's thread for the request) and async views (``atransaction()`` and the async ORM).

One server process per module (Django's settings are once per process) on a SQLite file; the
tests send real HTTP requests to it and read the file on connections of their own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from kit.atomic_django_child import django_asgi_server

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")


class Server:
    def __init__(self, url: str, db: str) -> None:
        self.url, self.db = url, db

    def ledger(self, key: str) -> list[int]:
        with sqlite3.connect(self.db) as raw:
            rows = raw.execute("SELECT cents FROM ledger WHERE key = ?", (key,)).fetchall()
        return [int(r[0]) for r in rows]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = str(tmp_path_factory.mktemp("djasgi") / "django.db")
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=django_asgi_server, args=(db, theirs), daemon=True)
    proc.start()
    try:
        assert ours.poll(60), "the server never started"
        kind, url = ours.recv()
        assert kind == "ready"
        yield Server(url, db)
    finally:
        proc.kill()
        proc.join(10)


@pytest.fixture(params=["sync", "async"])
def view(request: pytest.FixtureRequest) -> str:
    """The path prefix of the sync or the async view."""
    return "" if request.param == "sync" else "a"


def post(server: Server, path: str, key: str, cents: int = 5) -> httpx.Response:
    return httpx.post(
        server.url + path, json={"key": key, "cents": cents}, headers={"Idempotency-Key": key}
    )


def test_the_views_write_commits_with_the_record_and_replays(server: Server, view: str) -> None:
    key = f"commit-{view}"
    first = post(server, f"/{view}charges", key)
    assert first.status_code == 201
    assert server.ledger(key) == [5]
    again = post(server, f"/{view}charges", key)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert server.ledger(key) == [5]


@pytest.mark.parametrize("how", ["raise", "500"])
def test_an_exception_or_a_5xx_rolls_back_and_releases(server: Server, view: str, how: str) -> None:
    key = f"fail-{view}-{how}"
    for _ in range(2):  # released: the retry runs the view again, and rolls back again
        reply = post(server, f"/{view}fail?how={how}", key)
        assert reply.status_code == 500
        assert "idempotent-replayed" not in reply.headers
        assert server.ledger(key) == []


def test_concurrent_duplicates_execute_once(server: Server, view: str) -> None:
    key = f"race-{view}"

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        server.url + f"/{view}charges",
                        json={"key": key, "cents": 7},
                        headers={"Idempotency-Key": key},
                    )
                    for _ in range(8)
                )
            )

    replies = asyncio.run(all_at_once())
    assert {r.status_code for r in replies} == {201}
    assert len({r.content for r in replies}) == 1
    assert server.ledger(key) == [7]

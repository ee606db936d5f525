"""The README's atomic example answers a keyless request with 400 missing-key, not a 500.

Behind ``ASGIIdempotencyMiddleware(..., atomic=True)`` the handler calls ``atomic.transaction()``;
a request without an Idempotency-Key has no record to commit with, so that call raised
NoAtomicContext and the client got a 500 (and a traceback in the log). An atomic middleware
now requires the key on every covered request unless the application chose per route with a
callable ``required`` (docs/atomic.md). Real servers on loopback: Starlette under uvicorn (the
README's example) and Flask under a WSGI server, each on a real SQLite file.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.servers import serve_asgi, serve_wsgi
from retrysafe import Policy, atomic, open_store
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware

LEDGER = "CREATE TABLE IF NOT EXISTS charges (order_id TEXT, cents INTEGER)"


def _asgi(store: Any, policy: Policy | None) -> Any:
    async def charge(request: Request) -> JSONResponse:
        order = await request.json()
        db = await atomic.atransaction()
        db.execute("INSERT INTO charges VALUES (?, ?)", (order["id"], order["cents"]))
        return JSONResponse({"charged": order["cents"]}, status_code=201)

    async def login(request: Request) -> JSONResponse:  # not atomic: no key needed
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/charges", charge, methods=["POST"]),
            Route("/login", login, methods=["POST"]),
        ]
    )
    app.add_middleware(ASGIIdempotencyMiddleware, store=store, policy=policy, atomic=True)
    return app


def _wsgi(store: Any, policy: Policy | None) -> Any:
    app = flask.Flask("atomic-keyless")

    @app.post("/charges")
    def charge() -> Any:
        order = flask.request.get_json()
        atomic.transaction().execute(
            "INSERT INTO charges VALUES (?, ?)", (order["id"], order["cents"])
        )
        return {"charged": order["cents"]}, 201

    @app.post("/login")
    def login() -> Any:
        return {"ok": True}

    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=store, policy=policy, atomic=True
    )
    return app


@pytest.fixture(params=["asgi", "wsgi"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "app.db"
    store = _store(path)
    try:
        if request.param == "asgi":
            with serve_asgi(_asgi(store, None)) as base:
                yield base, path
        else:
            with serve_wsgi(_wsgi(store, None)) as base:
                yield base, path
    finally:
        store.close()


def _store(path: Path) -> Any:
    store = open_store(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        conn.execute(LEDGER)
    return store


def _charges(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM charges").fetchone()
    return int(n)


def test_a_keyless_request_is_a_400_missing_key(served: tuple[str, Path]) -> None:
    base, path = served
    response = httpx.post(base + "/charges", json={"id": "o1", "cents": 500}, timeout=30)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"].endswith("missing-key")
    assert "Idempotency-Key" in problem["detail"]
    assert _charges(path) == 0


def test_a_keyed_request_still_commits_once(served: tuple[str, Path]) -> None:
    base, path = served
    key = str(uuid.uuid4())
    for _ in range(2):
        response = httpx.post(
            base + "/charges",
            json={"id": "o1", "cents": 500},
            headers={"Idempotency-Key": key, "Authorization": "Bearer keyless-test"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
    assert _charges(path) == 1


def test_a_callable_required_is_the_applications_choice(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    store = _store(path)
    policy = Policy(required=lambda method, path: path.startswith("/charges"))
    try:
        with serve_asgi(_asgi(store, policy)) as base:
            login = httpx.post(base + "/login", timeout=30)
            charge = httpx.post(base + "/charges", json={"id": "o", "cents": 1}, timeout=30)
    finally:
        store.close()
    assert login.status_code == 200  # the app said /login needs no key
    assert charge.status_code == 400

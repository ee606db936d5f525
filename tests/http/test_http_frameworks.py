"""The middlewares inside real frameworks: a keyed POST runs once and its duplicate replays.

FastAPI and Starlette take the ASGI middleware (``app.add_middleware``), Litestar through its
``DefineMiddleware``, Quart around ``app.asgi_app``; Flask and Django take the WSGI middleware
around their WSGI callable (and Django's ASGI handler takes the ASGI one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import django
import flask
import httpx
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.stores import FAR
from retrysafe import current_key
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ENVIRON_KEY, ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware

BODY = b'{"amount": 100}'
HEADERS = {"Idempotency-Key": "order-1", "Content-Type": "application/json"}


class Counter:
    def __init__(self) -> None:
        self.runs = 0
        self.keys: list[tuple[str | None, str | None]] = []  # (framework's view, current_key())
        self._lock = threading.Lock()

    def hit(self, seen_key: str | None) -> int:
        with self._lock:
            self.runs += 1
            self.keys.append((seen_key, current_key()))
            return self.runs


def _policy(kit: Any) -> Policy:
    return Policy(scope=shared_scope, ttl=FAR * kit.tick, lease=FAR * kit.tick)


def _check(first: httpx.Response, second: httpx.Response, counter: Counter) -> None:
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert first.json() == {"run": 1, "amount": 100}
    assert counter.runs == 1
    assert counter.keys == [("order-1", "order-1")]


async def _asgi_twice(app: Any) -> tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        first = await client.post("/orders", content=BODY, headers=HEADERS)
        second = await client.post("/orders", content=BODY, headers=HEADERS)
        return first, second


def _wsgi_twice(app: Callable[..., Any]) -> tuple[httpx.Response, httpx.Response]:
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://testserver") as c:
        return (
            c.post("/orders", content=BODY, headers=HEADERS),
            c.post("/orders", content=BODY, headers=HEADERS),
        )


async def test_fastapi_keyed_post_runs_once_and_replays(kit):
    counter = Counter()
    app = FastAPI()
    app.add_middleware(ASGIIdempotencyMiddleware, store=kit.store, policy=_policy(kit))

    @app.post("/orders", status_code=201)
    async def create(request: FastAPIRequest, payload: dict[str, int]) -> dict[str, int]:
        run = counter.hit(request.state.idempotency_key)
        return {"run": run, **payload}

    _check(*await _asgi_twice(app), counter)


async def test_starlette_keyed_post_runs_once_and_replays(kit):
    counter = Counter()

    async def create(request: Request) -> JSONResponse:
        payload = await request.json()
        run = counter.hit(request.state.idempotency_key)
        return JSONResponse({"run": run, **payload}, status_code=201)

    app = Starlette(routes=[Route("/orders", create, methods=["POST"])])
    app.add_middleware(ASGIIdempotencyMiddleware, store=kit.store, policy=_policy(kit))
    _check(*await _asgi_twice(app), counter)


def test_flask_keyed_post_runs_once_and_replays(kit):
    counter = Counter()
    app = flask.Flask("retrysafe_flask_test")

    @app.post("/orders")
    def create() -> tuple[dict[str, int], int]:
        payload = flask.request.get_json()
        run = counter.hit(flask.request.environ.get(ENVIRON_KEY))
        return {"run": run, **payload}, 201

    app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=kit.store, policy=_policy(kit)
    )
    _check(*_wsgi_twice(app), counter)


# Django: configured once, minimally, with this module as its URLconf.
_django_counter = Counter()


def _django_create(request: HttpRequest) -> JsonResponse:
    import json

    payload = json.loads(request.body)
    run = _django_counter.hit(request.META.get(ENVIRON_KEY))
    return JsonResponse({"run": run, **payload}, status=201)


urlpatterns = [path("orders", _django_create)]


def _django() -> None:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="retrysafe-tests",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
        )
        django.setup()


def test_django_wsgi_keyed_post_runs_once_and_replays(kit):
    from django.core.wsgi import get_wsgi_application

    _django()
    global _django_counter
    _django_counter = Counter()
    app = WSGIIdempotencyMiddleware(get_wsgi_application(), store=kit.store, policy=_policy(kit))
    _check(*_wsgi_twice(app), _django_counter)


async def test_django_asgi_keyed_post_runs_once_and_replays(kit):
    from django.core.asgi import get_asgi_application

    _django()
    global _django_counter
    _django_counter = Counter()
    app = ASGIIdempotencyMiddleware(get_asgi_application(), store=kit.store, policy=_policy(kit))
    first, second = await _asgi_twice(app)
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert _django_counter.runs == 1


async def test_litestar_keyed_post_runs_once_and_replays(kit):
    """Litestar takes the middleware as it takes its own: ``DefineMiddleware`` in ``middleware``."""
    from litestar import Litestar, post
    from litestar import Request as LitestarRequest
    from litestar.middleware import DefineMiddleware

    counter = Counter()

    @post("/orders", status_code=201)
    async def create(request: LitestarRequest[Any, Any, Any]) -> dict[str, int]:
        payload = await request.json()
        run = counter.hit(request.scope["state"].get("idempotency_key"))
        return {"run": run, **payload}

    middleware = DefineMiddleware(ASGIIdempotencyMiddleware, store=kit.store, policy=_policy(kit))
    app = Litestar(
        route_handlers=[create],
        middleware=[middleware],
        # the handler's annotations are strings (PEP 563); Litestar resolves them here
        signature_namespace={"LitestarRequest": LitestarRequest},
    )
    _check(*await _asgi_twice(app), counter)


async def test_quart_keyed_post_runs_once_and_replays(kit):
    """Quart (Flask's API on ASGI): the middleware wraps ``app.asgi_app``."""
    import quart

    counter = Counter()
    app = quart.Quart("retrysafe_quart_test")

    @app.post("/orders")
    async def create() -> tuple[dict[str, int], int]:
        payload = await quart.request.get_json()
        run = counter.hit(quart.request.scope["state"].get("idempotency_key"))
        return {"run": run, **payload}, 201

    app.asgi_app = ASGIIdempotencyMiddleware(  # type: ignore[method-assign]
        app.asgi_app, store=kit.store, policy=_policy(kit)
    )
    _check(*await _asgi_twice(app), counter)

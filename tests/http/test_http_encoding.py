"""A replay must carry the representation headers its body needs (Content-Encoding above all):
an app compressing inside the middleware gets a readable replay."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kit.stores import StoreKit
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware


async def test_a_gzipped_response_replays_with_its_content_encoding(kit: StoreKit) -> None:
    runs = []

    async def report(request: Request) -> PlainTextResponse:
        runs.append(1)
        return PlainTextResponse("line of a long report\n" * 200, status_code=201)

    app = Starlette(
        routes=[Route("/reports", report, methods=["POST"])],
        middleware=[
            Middleware(
                ASGIIdempotencyMiddleware, store=kit.store, policy=Policy(scope=shared_scope)
            ),
            Middleware(GZipMiddleware, minimum_size=100),
        ],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers = {"Idempotency-Key": "report-1", "Accept-Encoding": "gzip"}
        first = await client.post("/reports", headers=headers)
        second = await client.post("/reports", headers=headers)
    assert first.headers["content-encoding"] == "gzip"
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-encoding"] == "gzip"
    assert second.text == first.text == "line of a long report\n" * 200
    assert len(runs) == 1

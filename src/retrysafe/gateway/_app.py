"""The gateway ASGI app: admin endpoints, per-route idempotency middleware, the forwarder.

    request ──> Gateway ──> {admin_prefix}/health, /metrics        (never forwarded)
                   └──────> ASGIIdempotencyMiddleware(route policy) ──> Forwarder ──> upstream

One store and one pooled httpx client per process, shared by every route. Each route gets
its own :class:`ASGIIdempotencyMiddleware` (a policy is fixed per middleware instance), chosen by
the longest matching path prefix (``target.choose``). Requests whose framing or path could be
read two ways are refused with a 400 problem first, before anything is claimed or forwarded.
The lifespan protocol closes the client and the store after uvicorn has let in-flight requests
finish (graceful shutdown); the middleware settles the records of requests that are cancelled
anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from email.utils import formatdate
from typing import Any

import httpx

from retrysafe import open_store
from retrysafe._policy import Policy
from retrysafe._problems import store_unavailable
from retrysafe.errors import ConfigurationError, StoreError
from retrysafe.gateway._config import RESOLVED_ENV, GatewayConfig
from retrysafe.gateway._forward import (
    Forwarder,
    Message,
    Receive,
    Scope,
    Send,
    new_client,
    send_problem,
)
from retrysafe.gateway._framing import FramingRefused, declared_length
from retrysafe.gateway._metrics import GatewayMetrics
from retrysafe.gateway._problems import RequestProblem, request_problem
from retrysafe.gateway._target import PathRefused, Prefix, choose, wire_path
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores import DualStore

log = logging.getLogger("retrysafe.gateway")

HEALTH_PROBE_ID = "retrysafe-gateway-health-probe"  # a read of an id no request can produce
HEALTH_TIMEOUT = 2.0
SETTLE_TIMEOUT = 5.0  # at shutdown, how long cancelled requests get to release their claims


class Gateway:
    """The reverse proxy with idempotency keys in front of one upstream."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: DualStore | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.store = store if store is not None else _open(config.store)
        timeouts = config.timeouts
        self.client = client or new_client(
            connect=timeouts.connect,
            read=timeouts.read,
            write=timeouts.write,
            pool=timeouts.pool,
            max_connections=config.max_connections,
        )
        forwarder = Forwarder(config.upstream, self.client, self.metrics)
        self._prefixes = [Prefix.of(route.path) for route in config.routes]
        self._routes = [
            ASGIIdempotencyMiddleware(forwarder, store=self.store, policy=route.policy())
            for route in config.routes
        ]
        self._default = ASGIIdempotencyMiddleware(
            forwarder, store=self.store, policy=config.policy.policy()
        )
        self._admin = config.admin_prefix
        self._idle = asyncio.Event()  # set while no proxied request is being handled
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            path: str = scope["path"]
            if path == self._admin or path.startswith(self._admin + "/"):
                await self._admin_endpoint(scope, send)
            else:
                await self._proxy(scope, receive, send)
        elif kind == "websocket":  # not proxied: refuse the handshake (ASGI websocket.close)
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k.lower() for k, _ in headers}
                metrics.response(message["status"], b"idempotent-replayed" in names)
                if b"date" not in names:
                    # uvicorn's own Date header is off so the upstream's passes through alone;
                    # replays and problems made here still get one (RFC 9110 §6.6.1). A replay
                    # never repeats the stored Date (SPEC 8): this one is fresh.
                    headers.append((b"date", formatdate(usegmt=True).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            declared_length(scope.get("http_version", "1.1"), scope["headers"])
            index = choose(wire_path(scope), scope.get("query_string", b""), self._prefixes)
        except (FramingRefused, PathRefused) as exc:
            kind = (
                RequestProblem.FRAMING if isinstance(exc, FramingRefused) else RequestProblem.PATH
            )
            log.info("refused %s request: %s", kind.slug.split("-")[0], exc)
            await send_problem(counting_send, request_problem(kind, str(exc)))
            return
        app = self._default if index is None else self._routes[index]
        metrics.in_flight += 1
        self._idle.clear()
        try:
            await app(scope, receive, counting_send)
        finally:
            # Reached only once the middleware has settled the record (completed or released).
            metrics.in_flight -= 1
            if metrics.in_flight == 0:
                self._idle.set()

    async def _admin_endpoint(self, scope: Scope, send: Send) -> None:
        sub = scope["path"][len(self._admin) :]
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b'{"error": "method not allowed"}', "application/json")
        elif sub == "/health":
            await self._health(send)
        elif sub == "/metrics":
            body = self.metrics.render()
            await _respond(send, 200, body, "text/plain; version=0.0.4; charset=utf-8")
        else:
            await _respond(send, 404, b'{"error": "not found"}', "application/json")

    async def _health(self, send: Send) -> None:
        """200 when the store answers a read within a bound; 503 problem otherwise (SPEC 17)."""
        try:
            await asyncio.wait_for(self.store.aget(HEALTH_PROBE_ID), HEALTH_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            log.error("health check: store unavailable: %s", exc)
            problem = store_unavailable(Policy())
            await _respond(send, problem.status, problem.body, "application/problem+json")
            return
        scheme = self.store.url.split(":", 1)[0]  # never the URL: it may hold a password
        doc = {"status": "ok", "store": scheme, "in_flight": self.metrics.in_flight}
        await _respond(send, 200, json.dumps(doc).encode(), "application/json")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._drain()
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _drain(self) -> None:
        """Wait until requests uvicorn cancelled at its shutdown timeout have settled.

        uvicorn cancels the request tasks still running when ``timeout_graceful_shutdown`` ends
        and then, without waiting for them, starts the lifespan shutdown. Their records are
        being released (shielded, in the middleware); closing the store under them would leave
        the claims in flight until their leases lapse, so give them a moment first.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), SETTLE_TIMEOUT)
        except TimeoutError:
            log.warning(
                "%d request(s) had not settled their records at shutdown; their claims will "
                "be taken over when their leases lapse",
                self.metrics.in_flight,
            )

    async def aclose(self) -> None:
        """Close the upstream pool and the store (after in-flight requests have finished)."""
        await self.client.aclose()
        try:
            await self.store.aclose()
        except StoreError as exc:  # shutting down anyway; say so and carry on
            log.warning("closing the store failed: %s", exc)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _open(url: str) -> DualStore:
    try:
        return open_store(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"store: {exc}") from exc


def create_app(config: GatewayConfig, **kwargs: Any) -> Gateway:
    """The gateway app for ``config`` (``store``/``client`` may be passed in for tests)."""
    return Gateway(config, **kwargs)


def app_from_env() -> Gateway:
    """App factory for uvicorn's worker processes: the CLI checked the config and put it in
    ``$RETRYSAFE_GATEWAY_RESOLVED`` before starting them."""
    text = os.environ.get(RESOLVED_ENV)
    if not text:
        raise ConfigurationError(
            f"{RESOLVED_ENV} is not set; start the gateway with `retrysafe proxy`"
        )
    return create_app(GatewayConfig.from_json(text))

"""The forwarding ASGI app: one request in, the same request out to the upstream, and back.

Request bodies stream to the upstream as the client sends them (a keyed request's body was
already buffered by the middleware to fingerprint it, SPEC 16, and is re-fed unchanged).
Response bodies stream back chunk by chunk as the upstream produces them, raw (compressed
bodies stay compressed), with the upstream's status and end-to-end headers unchanged.

The request target goes out byte for byte as the client sent it (after the upstream's path
prefix): it is handed to httpcore as the ``target`` extension, because httpx's URL parser
resolves dot segments and re-encodes some characters, so the upstream would see another path
than the one the route was chosen on (``_target.py`` decides which targets are forwarded).
The body's framing is the forwarder's own, never the client's headers: a body that arrived
whole goes out with its real length, a streamed one with the length the server enforced while
reading it (``_framing.py`` has refused everything ambiguous), else chunked. So the upstream
reads exactly the body the middleware fingerprinted.

Failures before the upstream answered become RFC 9457 problems: 502 when it cannot be
reached, broke the connection, or anything else failed on the way (never a bare 500), 504 on a
timeout, naming which timeout and its value. Being 5xx, they release the claim, so a
retry with the same key runs (SPEC 12). A failure after the response started cannot be
answered any more: :class:`UpstreamAborted` is raised, the middleware releases the claim, and
the server drops the client connection, so the client sees a broken response, never a
truncated one that looks complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from retrysafe._problems import ProblemResponse
from retrysafe.gateway._framing import declared_length
from retrysafe.gateway._headers import forwarded_headers, strip_hop_by_hop
from retrysafe.gateway._metrics import GatewayMetrics
from retrysafe.gateway._problems import UpstreamProblem, gateway_problem
from retrysafe.gateway._target import wire_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("retrysafe.gateway")

# What each httpx timeout bounds, and the setting that holds it, for the 504's detail.
_TIMEOUTS: dict[type[httpx.TimeoutException], tuple[str, str]] = {
    httpx.ConnectTimeout: ("connect", "connecting to the upstream did not finish within {}"),
    httpx.ReadTimeout: ("read", "the upstream sent no response data for {}"),
    httpx.WriteTimeout: ("write", "the upstream accepted no request data for {}"),
    httpx.PoolTimeout: ("pool", "every upstream connection (max_connections) stayed busy for {}"),
}


class UpstreamAborted(Exception):
    """The upstream failed after its response had started; the client connection is dropped."""


class ClientGone(Exception):
    """The client disconnected before it finished sending the request body."""


class Forwarder:
    """Sends each request to ``upstream`` through a pooled ``httpx.AsyncClient``."""

    def __init__(self, upstream: str, client: httpx.AsyncClient, metrics: GatewayMetrics) -> None:
        self.base = httpx.URL(upstream)
        self.prefix = self.base.raw_path.rstrip(b"/")
        self.client = client
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "http.request":  # gone before sending anything: nobody to answer
            return
        body = first.get("body", b"")
        headers = self._headers(scope)
        content: bytes | AsyncIterator[bytes] = body
        if first.get("more_body", False):
            content = _stream(body, receive)
            # uvicorn read exactly this many bytes (or the client is gone); without it, chunked.
            length = declared_length(scope.get("http_version", "1.1"), scope["headers"])
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
        # httpx.Request, not client.build_request: the latter merges the client's cookie jar
        # into the request, and a shared proxy must never send one user's cookies for another.
        request = httpx.Request(
            scope["method"],
            self.base,
            headers=headers,
            content=content,
            extensions={"target": self._target(scope)},
        )
        # httpx uppercases the method; the upstream must get it as the client sent it (method
        # names are case-sensitive, RFC 9110 §9.1): ``post`` is not ``POST`` to every upstream,
        # and a filter in front of the gateway may have let ``post`` through as "not a POST".
        request.method = scope["method"]
        started = time.perf_counter()
        try:
            response = await self.client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.TimeoutException as exc:
            await self._problem(send, UpstreamProblem.TIMEOUT, self._timed_out(exc), "timeout")
            return
        except httpx.ConnectError as exc:
            detail = f"cannot connect to the upstream: {_describe(exc)}"
            await self._problem(send, UpstreamProblem.UNREACHABLE, detail, "unreachable")
            return
        except Exception as exc:  # httpcore lets some h11 errors through unmapped: never a 500
            detail = f"the upstream failed before answering: {_describe(exc)}"
            if not isinstance(exc, httpx.TransportError):
                log.exception("forwarding failed unexpectedly")
            await self._problem(send, UpstreamProblem.FAILED, detail, "failed")
            return
        self.metrics.upstream_latency(time.perf_counter() - started)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _response_headers(response),
                }
            )
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.TransportError as exc:
            self.metrics.upstream_error("aborted")
            raise UpstreamAborted(
                f"upstream failed mid-response ({_describe(exc)}); dropping the client connection"
            ) from exc
        finally:
            await response.aclose()

    def _target(self, scope: Scope) -> bytes:
        """The request target for the upstream: its path prefix, then the client's bytes."""
        query = scope.get("query_string", b"")
        return self.prefix + wire_path(scope) + (b"?" + query if query else b"")

    def _timed_out(self, exc: httpx.TimeoutException) -> str:
        name, what = next(
            (v for kind, v in _TIMEOUTS.items() if isinstance(exc, kind)),
            ("read", "the upstream timed out after {}"),
        )
        seconds = getattr(self.client.timeout, name)
        return what.format(f"{seconds:g} s (timeouts.{name})")

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """End-to-end headers plus the forwarding ones; never the client's framing."""
        client = scope.get("client")
        return forwarded_headers(
            [
                (n, v)
                for n, v in strip_hop_by_hop(scope["headers"])
                if n.lower() != b"content-length"
            ],
            (client[0], client[1]) if client else None,
            scope.get("scheme", "http"),
        )

    async def _problem(self, send: Send, problem: UpstreamProblem, detail: str, kind: str) -> None:
        self.metrics.upstream_error(kind)
        log.warning("upstream %s: %s", kind, detail)
        await send_problem(send, gateway_problem(problem, detail))


async def send_problem(send: Send, answer: ProblemResponse) -> None:
    """Answer with a problem the gateway made (the request was not, or not fully, forwarded)."""
    headers = [(k.encode(), v.encode()) for k, v in answer.headers]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def _response_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers. A chunked response's Content-Length is dropped
    (RFC 9112 §6.3: an intermediary forwarding such a message must remove it): the client
    gets the de-chunked body, whose length that field does not describe."""
    chunked = "transfer-encoding" in response.headers
    return [
        (name.lower(), value)
        for name, value in strip_hop_by_hop(response.headers.raw)
        if not (chunked and name.lower() == b"content-length")
    ]


async def _stream(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    """The request body as the client sends it, without buffering it."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone("client disconnected while sending the request body")
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            return


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def new_client(
    *, connect: float, read: float, write: float, pool: float, max_connections: int
) -> httpx.AsyncClient:
    """The pooled client: no redirects, no proxies from the environment, no cookies kept.

    ``send`` stores every response's Set-Cookie in the client's jar; the jar's policy refuses
    them all so a long-running gateway does not accumulate its users' cookies.
    """
    return httpx.AsyncClient(
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        timeout=httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        follow_redirects=False,
        trust_env=False,
    )

"""A key with a non-ASCII character is refused naming the character the client sent.

Servers hand header bytes to the application decoded as Latin-1 (ASGI, PEP 3333), so "é"
sent in UTF-8 arrived as "Ã©" and the 400 malformed-key detail named "Ã" (U+00C3), a
character the client never sent. Hostile bytes over a raw socket to real ASGI and WSGI
servers; invisible characters (a bidi override, NUL-like controls) are escaped, not printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from kit.servers import raw_request, serve_asgi, serve_wsgi
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ran"})


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("201 Created", [("Content-Length", "3")])
    yield b"ran"


SERVERS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "asgi": lambda: serve_asgi(ASGIIdempotencyMiddleware(_asgi_app, store=MemoryStore())),
    "wsgi": lambda: serve_wsgi(WSGIIdempotencyMiddleware(_wsgi_app, store=MemoryStore())),
}


def _detail(base: str, key: bytes) -> str:
    request = (
        b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: " + key + b"\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    response = raw_request(base, request)
    assert response is not None
    assert response.status == 400, response.body
    doc = json.loads(response.body)
    assert doc["type"].endswith("malformed-key")
    detail: str = doc["detail"]
    return detail


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("café-1".encode(), "'é' (U+00E9, UTF-8 bytes c3 a9)"),
        ("pay-€".encode(), "'€' (U+20AC, UTF-8 bytes e2 82 ac)"),
        ("k-\U0001f600".encode(), "(U+1F600, UTF-8 bytes f0 9f 98 80)"),
        ("k\u202eevil".encode(), "'\\u202e' (U+202E, UTF-8 bytes e2 80 ae)"),
        (b"k\xe9y", "the character 'é' (U+00E9);"),  # Latin-1, not UTF-8: that byte as is
    ],
    ids=["e-acute", "euro", "emoji", "bidi-override", "latin1-byte"],
)
def test_the_detail_names_the_character_sent(server: str, key: bytes, shown: str) -> None:
    with SERVERS[server]() as base:
        detail = _detail(base, key)
    assert shown in detail, detail
    assert "Ã" not in detail
    assert "\u202e" not in detail  # an invisible character is escaped, never echoed

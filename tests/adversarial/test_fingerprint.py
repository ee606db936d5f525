"""The request fingerprint over the wire: two requests the application can tell apart never
replay each other, and a retry sent as before always does (SPEC 6, 9).

Each test drives a real server on loopback (uvicorn, wsgiref, Werkzeug, the gateway in front
of a real upstream process) with the exact bytes a client sends, since HTTP libraries
normalise the very differences at stake (an escaped slash, the order of a repeated name).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from kit.gateway import Upstream, serve_in_thread
from kit.servers import RawResponse, raw_request, serve_asgi, serve_werkzeug, serve_wsgi
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.gateway import GatewayConfig, RoutePolicy, create_app
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore


class EchoAsgi:
    """Answers 201 with what it saw; counts its runs."""

    def __init__(self) -> None:
        self.runs: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        seen = {
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
        }
        self.runs.append(seen)
        body = json.dumps({"run": len(self.runs), **seen}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class EchoWsgi:
    """The WSGI twin of :class:`EchoAsgi`."""

    def __init__(self) -> None:
        self.runs: list[dict[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        seen = {
            "uri": environ.get("REQUEST_URI", ""),
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
        }
        self.runs.append(seen)
        body = json.dumps({"run": len(self.runs), **seen}).encode()
        start_response("201 Created", [("Content-Type", "application/json")])
        return [body]


def post(base: str, target: str, key: str) -> RawResponse:
    """POST ``target`` byte for byte (no client library re-encodes it)."""
    request = (
        f"POST {target} HTTP/1.1\r\nHost: test\r\nIdempotency-Key: {key}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    response = raw_request(base, request)
    assert response is not None, f"no answer to POST {target}"
    return response


def problem_type(response: RawResponse) -> str:
    return str(json.loads(response.body)["type"]).rsplit(":", 1)[-1]


Serve = Callable[[Any], AbstractContextManager[str]]


@pytest.fixture(params=["asgi", "wsgiref", "werkzeug"])
def door(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A middleware-protected echo app on a real server: (base URL, the app's runs)."""
    if request.param == "asgi":
        asgi = EchoAsgi()
        with serve_asgi(
            ASGIIdempotencyMiddleware(
                asgi, store=MemoryStore(), telemetry=None, policy=Policy(scope=shared_scope)
            )
        ) as base:
            yield base, asgi.runs
        return
    wsgi = EchoWsgi()
    serve: Serve = serve_wsgi if request.param == "wsgiref" else serve_werkzeug
    with serve(
        WSGIIdempotencyMiddleware(
            wsgi, store=MemoryStore(), telemetry=None, policy=Policy(scope=shared_scope)
        )
    ) as base:
        yield base, wsgi.runs


def assert_mismatch(first: RawResponse, second: RawResponse, runs: list[dict[str, str]]) -> None:
    assert first.status == 201
    assert second.status == 422, (second.status, second.body)
    assert problem_type(second) == "key-mismatch"
    assert second.header("idempotent-replayed") is None
    assert len(runs) == 1


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("/items?a=1&a=2", "/items?a=2&a=1"),  # a repeated name's order is a list's order
        ("/items?x=%ff", "/items?x=%fe"),  # two invalid UTF-8 bytes, not two U+FFFD
        ("/items?x=%ff", "/items?x=%EF%BF%BD"),  # ... nor the replacement character itself
        ("/items?x=a%2Bb", "/items?x=a+b"),  # a plus sign is not a space
    ],
)
def test_requests_with_queries_the_app_tells_apart_do_not_replay_each_other(
    door: tuple[str, list[dict[str, str]]], one: str, other: str
) -> None:
    base, runs = door
    key = str(uuid.uuid4())
    assert_mismatch(post(base, one, key), post(base, other, key), runs)


@pytest.mark.parametrize("door", ["asgi", "werkzeug"], indirect=True)
def test_an_escaped_slash_is_another_path(door: tuple[str, list[dict[str, str]]]) -> None:
    # uvicorn and Werkzeug both decode "%2F" in the path they hand over, but keep the raw
    # target (raw_path, REQUEST_URI): an application or a proxy may route on it.
    base, runs = door
    key = str(uuid.uuid4())
    assert_mismatch(post(base, "/items/a%2Fb", key), post(base, "/items/a/b", key), runs)


@pytest.mark.parametrize(
    ("one", "again"),
    [
        ("/items/a%2Fb?x=%ff&a=1&a=2", "/items/a%2Fb?x=%ff&a=1&a=2"),  # the same bytes
        ("/items?a=1&b=2", "/items?b=2&a=1"),  # different names in another order
        ("/items?a=1&b=2&a=3", "/items?b=2&a=1&a=3"),  # ... a repeated one's order kept
        ("/items?x=%41", "/items?x=A"),  # an escape is the byte it encodes
        ("/caf%C3%A9?q=%C3%A9", "/caf%C3%A9?q=%C3%A9"),
    ],
)
def test_a_retry_of_the_same_request_replays(
    door: tuple[str, list[dict[str, str]]], one: str, again: str
) -> None:
    base, runs = door
    key = str(uuid.uuid4())
    first, retry = post(base, one, key), post(base, again, key)
    assert first.status == 201
    assert retry.status == 201
    assert retry.header("idempotent-replayed") == "true"
    assert retry.body == first.body
    assert len(runs) == 1


@pytest.mark.parametrize("door", ["asgi", "werkzeug"], indirect=True)
def test_an_absolute_form_target_is_its_path(door: tuple[str, list[dict[str, str]]]) -> None:
    # RFC 9112 3.2.2: a server accepts "POST http://host/p" as "/p" (uvicorn's raw_path and
    # Werkzeug's REQUEST_URI keep the scheme and host): the same request either way.
    base, runs = door
    key = str(uuid.uuid4())
    first = post(base, "http://test/items/a%2Fb?a=1&a=2", key)
    again = post(base, "/items/a%2Fb?a=1&a=2", key)
    other = post(base, "http://test/items/a/b?a=1&a=2", key)
    assert first.status == 201
    assert again.header("idempotent-replayed") == "true"
    assert again.body == first.body
    assert other.status == 422
    assert len(runs) == 1


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream(tmp_path / "executions.log").start()
    yield up
    up.stop()


def test_the_gateway_does_not_answer_one_path_with_anothers_response(
    upstream: Upstream, tmp_path: Path
) -> None:
    # The gateway forwards the raw target: the upstream receives /orders/a/b as such, so
    # answering it with the stored answer of /orders/a%2Fb would be another request's answer.
    app = create_app(
        GatewayConfig(
            upstream=upstream.url,
            store=f"sqlite:///{tmp_path / 'g.db'}",
            policy=RoutePolicy(anonymous="shared"),  # not about who owns a key: no credentials
        )
    )
    key = str(uuid.uuid4())
    with serve_in_thread(app) as base:
        first = post(base, "/orders/a%2Fb", key)
        second = post(base, "/orders/a/b", key)
        retry = post(base, "/orders/a%2Fb", key)
    assert first.status == 200
    assert json.loads(first.body)["raw_path"] == "/orders/a%2Fb"
    assert second.status == 422, (second.status, second.body)
    assert problem_type(second) == "key-mismatch"
    assert retry.status == 200
    assert retry.header("idempotent-replayed") == "true"
    assert retry.body == first.body
    assert upstream.count("/orders/a/b") == 1  # the upstream logs the decoded path: one run

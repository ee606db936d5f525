"""Who owns a key (issue 14, defect 1): principals never share records, over a real server.

An application that authenticates by a session cookie, an API-key header, or an authentication
middleware sends no ``Authorization`` header. Under the old default every such request was
filed in one "anonymous" scope: user B sending user A's key with the same body got A's stored
response, a different body got 422 (confirming the key exists), and a key claimed first by an
attacker planted a response for the victim. Now the default refuses a keyed request it cannot
tie to a principal, and the ready-made scopes (a named cookie, an API-key header, the user an
earlier authentication middleware set) keep each principal's keys apart while one principal's
retries stay in one scope when unrelated cookies rotate.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.servers import serve_asgi, serve_wsgi
from retrysafe._policy import Policy
from retrysafe._scopes import cookie_scope, header_scope, shared_scope, user_scope
from retrysafe.gateway import Gateway
from retrysafe.gateway._config import load_config
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

PROBLEM = "urn:retrysafe:problem:unscoped-key"
SESSIONS = {"s-alice": "alice", "s-bob": "bob", "s-mallory": "mallory"}
API_KEYS = {"k-alice": "alice", "k-bob": "bob"}
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


class Ledger:
    """What the application really did: one entry per execution, per user."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[str] = Counter()

    def charge(self, user: str, body: bytes) -> dict[str, Any]:
        with self.lock:
            self.runs[user] += 1
            return {"user": user, "order": json.loads(body or b"{}"), "run": self.runs[user]}


def who(cookie: str | None, api_key: str | None) -> str:
    """The application's own authentication: a session cookie or an API key."""
    for pair in (cookie or "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == "sessionid" and value in SESSIONS:
            return SESSIONS[value]
    return API_KEYS.get(api_key or "", "nobody")


def asgi_app(ledger: Ledger) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        user = who(headers.get("cookie"), headers.get("x-api-key"))
        doc = json.dumps(ledger.charge(user, body)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": doc})

    return app


def wsgi_app(ledger: Ledger) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        user = environ.get("REMOTE_USER") or who(
            environ.get("HTTP_COOKIE"), environ.get("HTTP_X_API_KEY")
        )
        doc = json.dumps(ledger.charge(user, body)).encode()
        start_response("201 Created", [("Content-Type", "application/json")])
        return [doc]

    return app


@contextmanager
def server(kind: str, ledger: Ledger, policy: Policy | None) -> Iterator[str]:
    """The cookie/API-key application behind the middleware, served for real."""
    store = MemoryStore()
    if kind == "asgi":
        with serve_asgi(
            ASGIIdempotencyMiddleware(asgi_app(ledger), store=store, policy=policy)
        ) as url:
            yield url
    else:
        with serve_wsgi(
            WSGIIdempotencyMiddleware(wsgi_app(ledger), store=store, policy=policy)
        ) as url:
            yield url


def post(url: str, body: dict[str, Any], key: str = KEY, **headers: str) -> httpx.Response:
    sent = {"Idempotency-Key": key, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return httpx.post(f"{url}/charges", json=body, headers=sent, timeout=30.0)


def assert_unscoped(reply: httpx.Response, wants: str) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    doc = reply.json()
    assert doc["type"] == PROBLEM
    assert wants in doc["detail"]
    assert "Policy(scope=" in doc["detail"]


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_default_policy_refuses_keys_it_cannot_tie_to_a_principal(kind: str) -> None:
    """Cookie-session users under the default policy: nobody's record is filed, so nobody can
    read, probe or plant one; the handler never ran for a keyed request."""
    ledger = Ledger()
    with server(kind, ledger, None) as url:
        alice = post(url, {"amount": 10}, Cookie="sessionid=s-alice")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")
        probe = post(url, {"amount": 99}, Cookie="sessionid=s-mallory")
        unkeyed = httpx.post(f"{url}/charges", json={}, headers={"Cookie": "sessionid=s-bob"})

    for reply in (alice, bob, probe):
        assert_unscoped(reply, "Authorization header")
        assert "alice" not in reply.text
    assert ledger.runs == Counter({"bob": 1})  # only the request without a key ran
    assert unkeyed.status_code == 201


def test_a_session_cookie_scope_keeps_principals_apart(kind: str) -> None:
    ledger = Ledger()
    with server(kind, ledger, Policy(scope=cookie_scope("sessionid"))) as url:
        # Mallory claims the key first, hoping to plant a response for Alice...
        planted = post(url, {"amount": 1}, Cookie="sessionid=s-mallory")
        assert planted.status_code == 201
        alice = post(url, {"amount": 10}, Cookie="csrftoken=a1; sessionid=s-alice; _ga=1")
        # ... then replays it with Alice's body, hoping to read Alice's result.
        stolen = post(url, {"amount": 10}, Cookie="sessionid=s-mallory")
        # Alice's retry: the CSRF and analytics cookies rotated; still her one scope.
        retry = post(url, {"amount": 10}, Cookie="_ga=2; sessionid=s-alice; csrftoken=a2")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")

    assert alice.status_code == 201
    assert alice.json()["user"] == "alice"
    assert "idempotent-replayed" not in alice.headers  # not Mallory's planted response
    assert retry.json() == alice.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert stolen.status_code == 422  # Mallory's own key, another body: Alice's stays hidden
    assert "alice" not in stolen.text
    assert bob.status_code == 201
    assert bob.json()["user"] == "bob"
    assert ledger.runs == Counter({"mallory": 1, "alice": 1, "bob": 1})


def test_an_api_key_scope_refuses_requests_without_the_key(kind: str) -> None:
    """With ``header_scope`` every request lacking the header used to share one scope."""
    ledger = Ledger()
    with server(kind, ledger, Policy(scope=header_scope("X-Api-Key"))) as url:
        alice = post(url, {"amount": 10}, X_Api_Key="k-alice")
        bob = post(url, {"amount": 10}, X_Api_Key="k-bob")
        keyless = post(url, {"amount": 10}, Cookie="sessionid=s-mallory")

    assert alice.json()["user"] == "alice"
    assert bob.json()["user"] == "bob"
    assert "idempotent-replayed" not in bob.headers
    assert_unscoped(keyless, "X-Api-Key header")
    assert ledger.runs == Counter({"alice": 1, "bob": 1})


def test_shared_scope_pools_callers_only_when_chosen(kind: str) -> None:
    """The explicit opt-in for single-principal services: every caller shares one key space."""
    ledger = Ledger()
    with server(kind, ledger, Policy(scope=shared_scope)) as url:
        first = post(url, {"amount": 10}, Cookie="sessionid=s-alice")
        second = post(url, {"amount": 10}, Cookie="sessionid=s-bob")

    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert ledger.runs == Counter({"alice": 1})


class CookieBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = SESSIONS.get(conn.cookies.get("sessionid", ""))
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def test_user_scope_reads_starlettes_authenticated_user() -> None:
    """AuthenticationMiddleware listed before the idempotency middleware (so it runs first)
    sets ``scope["user"]``; ``user_scope`` files each user's keys apart."""
    ledger = Ledger()

    async def charge(request: Request) -> JSONResponse:
        user = request.user.username if request.user.is_authenticated else "nobody"
        return JSONResponse(ledger.charge(user, await request.body()), status_code=201)

    app = Starlette(
        routes=[Route("/charges", charge, methods=["POST"])],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=CookieBackend()),  # outermost: first
            Middleware(
                ASGIIdempotencyMiddleware, store=MemoryStore(), policy=Policy(scope=user_scope)
            ),
        ],
    )
    with serve_asgi(app) as url:
        alice = post(url, {"amount": 10}, Cookie="sessionid=s-alice; csrftoken=1")
        retry = post(url, {"amount": 10}, Cookie="csrftoken=2; sessionid=s-alice")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")
        anonymous = post(url, {"amount": 10})

    assert alice.json()["user"] == "alice"
    assert retry.headers["idempotent-replayed"] == "true"
    assert bob.json()["user"] == "bob"
    assert "idempotent-replayed" not in bob.headers
    assert_unscoped(anonymous, "authenticated user")
    assert ledger.runs == Counter({"alice": 1, "bob": 1})


def test_user_scope_reads_remote_user_under_wsgi() -> None:
    """A WSGI authentication middleware wrapping ours sets ``REMOTE_USER`` (PEP 3333)."""
    ledger = Ledger()
    inner = WSGIIdempotencyMiddleware(
        wsgi_app(ledger), store=MemoryStore(), policy=Policy(scope=user_scope)
    )

    def authenticate(environ: dict[str, Any], start_response: Any) -> Any:
        user = who(environ.get("HTTP_COOKIE"), None)
        if user != "nobody":
            environ["REMOTE_USER"] = user
        return inner(environ, start_response)

    with serve_wsgi(authenticate) as url:
        alice = post(url, {"amount": 10}, Cookie="sessionid=s-alice")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")
        anonymous = post(url, {"amount": 10})

    assert alice.json()["user"] == "alice"
    assert bob.json()["user"] == "bob"
    assert "idempotent-replayed" not in bob.headers
    assert_unscoped(anonymous, "authenticated user")
    assert ledger.runs == Counter({"alice": 1, "bob": 1})


@contextmanager
def gateway(tmp_path: Path, policy: str) -> Iterator[tuple[str, Ledger]]:
    """The gateway in front of the cookie/API-key application, ``policy`` its [policy] table."""
    ledger = Ledger()
    with serve_asgi(asgi_app(ledger)) as upstream:
        path = tmp_path / "gateway.toml"
        path.write_text(f'upstream = "{upstream}"\n[policy]\n{policy}\n')
        app = Gateway(load_config(path, env={}), store=MemoryStore())
        with serve_asgi(app) as url:
            yield url, ledger


def test_the_gateway_refuses_keys_without_credentials(tmp_path: Path) -> None:
    with gateway(tmp_path, "") as (url, ledger):
        alice = post(url, {"amount": 10}, Cookie="sessionid=s-alice")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")

    assert_unscoped(alice, "Authorization header")
    assert_unscoped(bob, "Authorization header")
    assert ledger.runs == Counter()  # nothing reached the upstream


def test_the_gateway_scopes_by_a_session_cookie(tmp_path: Path) -> None:
    with gateway(tmp_path, 'scope_cookie = "sessionid"') as (url, ledger):
        alice = post(url, {"amount": 10}, Cookie="sessionid=s-alice; csrftoken=1")
        retry = post(url, {"amount": 10}, Cookie="csrftoken=2; sessionid=s-alice")
        bob = post(url, {"amount": 10}, Cookie="sessionid=s-bob")
        neither = post(url, {"amount": 10})

    assert alice.json()["user"] == "alice"
    assert retry.headers["idempotent-replayed"] == "true"
    assert bob.json()["user"] == "bob"
    assert "idempotent-replayed" not in bob.headers
    assert_unscoped(neither, "the Authorization header or the sessionid cookie")
    assert ledger.runs == Counter({"alice": 1, "bob": 1})


def test_the_gateway_shares_one_scope_only_when_told(tmp_path: Path) -> None:
    with gateway(tmp_path, 'anonymous = "shared"') as (url, ledger):
        first = post(url, {"amount": 10}, Cookie="sessionid=s-alice")
        second = post(url, {"amount": 10}, Cookie="sessionid=s-bob")
        with_token = post(url, {"amount": 10}, Authorization="Bearer k-bob")

    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in with_token.headers  # credentials: a scope of its own
    assert ledger.runs == Counter({"alice": 1, "nobody": 1})

"""Answers that say "try again" (408, 425, 429, a 5xx with Retry-After) release the key.

Stored, a 429 replayed for the whole TTL without its ``Retry-After`` (never replayed, SPEC 8):
every retry of the key got the same "too many requests" for a day, retrysafe's own client spent
all its attempts on replays, and behind the gateway one upstream 429 pinned the key. Every test
drives a real server over loopback and counts the handler's runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kit.servers import serve_asgi, serve_wsgi
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.client import IdempotentTransport, RetryPolicy
from retrysafe.errors import ConfigurationError
from retrysafe.gateway import GatewayConfig, RoutePolicy, create_app
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

Answer = tuple[int, list[tuple[str, str]], bytes]
WAIT = 30.0  # bounds a hang only (a loaded CI machine)
CREATED: Answer = (201, [("content-type", "application/json")], b'{"ok": true}')


class Script:
    """Answers each run with the next scripted answer (the last one repeats); counts runs."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = answers
        self.runs = 0
        self._lock = threading.Lock()

    def next(self) -> Answer:
        with self._lock:
            self.runs += 1
            return self.answers[min(self.runs, len(self.answers)) - 1]

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        status, headers, body = self.next()
        raw = [(k.encode(), v.encode()) for k, v in headers]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def wsgi(self, environ: Any, start_response: Any) -> list[bytes]:
        status, headers, body = self.next()
        start_response(f"{status} X", [*headers, ("Content-Length", str(len(body)))])
        return [body]


def served(door: str, script: Script, policy: Policy) -> Any:
    store = MemoryStore()
    if door == "asgi":
        return serve_asgi(ASGIIdempotencyMiddleware(script.asgi, store=store, policy=policy))
    return serve_wsgi(WSGIIdempotencyMiddleware(script.wsgi, store=store, policy=policy))


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/orders", content=b"{}", headers={"Idempotency-Key": key}, timeout=WAIT
    )


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
@pytest.mark.parametrize("status", [408, 425, 429])
def test_try_again_status_releases_the_key(door: str, status: int) -> None:
    script = Script((status, [("retry-after", "7")], b"slow down"), CREATED)
    with served(door, script, Policy(scope=shared_scope)) as url:
        first = post(url, "k-try-again")
        assert first.status_code == status
        assert first.headers["retry-after"] == "7"  # the live answer keeps it
        again = post(url, "k-try-again")
    assert again.status_code == 201, "the retry was answered from a stored 'try again'"
    assert "idempotent-replayed" not in again.headers
    assert script.runs == 2


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_503_with_retry_after_is_released_even_when_5xx_are_stored(door: str) -> None:
    script = Script((503, [("retry-after", "3")], b"maintenance"), (500, [], b"broken"), CREATED)
    with served(door, script, Policy(scope=shared_scope, store_server_errors=True)) as url:
        assert post(url, "k-503").status_code == 503
        stored = post(url, "k-503")  # a 500 without Retry-After is an outcome here: stored
        replay = post(url, "k-503")
    assert stored.status_code == 500
    assert replay.status_code == 500
    assert replay.headers["idempotent-replayed"] == "true"
    assert script.runs == 2


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_storing_try_again_statuses_is_opt_in(door: str) -> None:
    script = Script((429, [("retry-after", "7")], b"slow down"), CREATED)
    with served(door, script, Policy(scope=shared_scope, release_statuses=frozenset())) as url:
        post(url, "k-opt-in")
        replay = post(url, "k-opt-in")
    assert replay.status_code == 429
    assert replay.headers["idempotent-replayed"] == "true"
    assert script.runs == 1


@pytest.mark.parametrize("bad", [frozenset({200}), frozenset({"429"}), 429, frozenset({True})])
def test_release_statuses_must_be_error_statuses(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="release_statuses"):
        Policy(release_statuses=bad)


def test_client_transport_gets_through_after_a_429() -> None:
    """The client honours the live Retry-After and its retry runs the handler again."""
    script = Script((429, [("retry-after", "0")], b"slow down"), CREATED)
    retry = RetryPolicy(attempts=3, base=0.0, deadline=None)
    with serve_asgi(
        ASGIIdempotencyMiddleware(
            script.asgi, store=MemoryStore(), policy=Policy(scope=shared_scope)
        )
    ) as url:
        transport = IdempotentTransport(retry=retry, budget=False)
        with httpx.Client(transport=transport, timeout=WAIT) as client:
            answer = client.post(url + "/orders", content=b"{}")
    assert answer.status_code == 201
    assert script.runs == 2


def test_client_does_not_spend_attempts_on_a_replayed_answer() -> None:
    """Where a server does store a 429 (opted in), retrying its replay only gets it again:
    the client stops at the first replay instead of spending every attempt on it."""
    script = Script((429, [("retry-after", "0")], b"slow down"))
    requests = 0

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        nonlocal requests
        requests += 1
        await mw(scope, receive, send)

    policy = Policy(scope=shared_scope, release_statuses=frozenset())
    mw = ASGIIdempotencyMiddleware(script.asgi, store=MemoryStore(), policy=policy)
    retry = RetryPolicy(attempts=5, base=0.0, deadline=None)
    with serve_asgi(counting) as url:
        transport = IdempotentTransport(retry=retry, budget=False)
        with httpx.Client(transport=transport, timeout=WAIT) as client:
            answer = client.post(url + "/orders", content=b"{}")
    assert answer.status_code == 429
    assert answer.headers["idempotent-replayed"] == "true"
    assert requests == 2  # the live 429, then its replay
    assert script.runs == 1


@pytest.fixture
def upstream() -> Iterator[tuple[str, Script]]:
    script = Script((429, [("retry-after", "30")], b"upstream busy"), CREATED)
    with serve_asgi(script.asgi, interface="asgi3") as url:
        yield url, script


def test_gateway_does_not_pin_an_upstream_429(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    # Not about who owns a key: no credentials are sent, one explicit shared scope.
    config = GatewayConfig(upstream=url, store="memory://", policy=RoutePolicy(anonymous="shared"))
    gateway = create_app(config)
    with serve_asgi(gateway) as gw:
        first = post(gw, "k-gateway")
        second = post(gw, "k-gateway")
    assert first.status_code == 429
    assert first.headers["retry-after"] == "30"
    assert second.status_code == 201, "the gateway replayed the upstream's 429"
    assert script.runs == 2

"""Real sockets on loopback: connect errors, resets and timeouts from a fault server.

The transports wrap httpx's own HTTP transports here, so the errors are the real ones httpx
raises, not stand-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kit.client_servers import FaultServer, free_port
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentTransport,
    RetriesExhausted,
    RetryPolicy,
)

FAST = RetryPolicy(base=0.01, cap=0.02, deadline=10.0)


def post(flavor: str, url: str, retry: RetryPolicy = FAST, **kw: Any) -> httpx.Response:
    kw.setdefault("json", {"amount": 5})
    kw.setdefault("timeout", httpx.Timeout(2.0))
    if flavor == "sync":
        with httpx.Client(transport=IdempotentTransport(retry=retry)) as client:
            return client.post(url, **kw)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=AsyncIdempotentTransport(retry=retry)) as client:
            return await client.post(url, **kw)

    return asyncio.run(go())


@pytest.fixture
def servers() -> Iterator[list[FaultServer]]:
    made: list[FaultServer] = []
    yield made
    for server in made:
        server.close()


def server(servers: list[FaultServer], *script: str) -> FaultServer:
    s = FaultServer(*script)
    servers.append(s)
    return s


def key_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n")[1:] if b"attempt" not in line.lower()]
    return b"\r\n".join(lines), body


def test_connection_refused_is_retried_then_exhausted(flavor: str) -> None:
    with pytest.raises(RetriesExhausted) as caught:
        post(flavor, f"http://127.0.0.1:{free_port()}/charges")
    err = caught.value
    assert len(err.attempts) == 3
    assert all((a.error or "").startswith("ConnectError") for a in err.attempts)
    assert isinstance(err.last_error, httpx.ConnectError)


def test_resets_are_retried_with_identical_bytes(flavor: str, servers: list[FaultServer]) -> None:
    s = server(servers, "reset", "reset", "ok")
    response = post(flavor, s.url + "/charges")
    assert response.status_code == 201
    assert len(s.requests) == 3
    assert len({key_and_body(r) for r in s.requests}) == 1  # same head (bar attempt) and body
    assert b"idempotency-key: " in s.requests[0].lower()
    attempts = [
        line for r in s.requests for line in r.split(b"\r\n") if line.lower().startswith(b"idem")
    ]
    assert [a for a in attempts if b"attempt" in a.lower()] == [
        b"Idempotency-Attempt: 1",
        b"Idempotency-Attempt: 2",
        b"Idempotency-Attempt: 3",
    ]


def test_read_timeouts_are_retried_for_keyed_requests(
    flavor: str, servers: list[FaultServer]
) -> None:
    s = server(servers, "hang", "ok")
    response = post(flavor, s.url + "/charges", timeout=httpx.Timeout(2.0, read=0.2))
    assert response.status_code == 201
    assert len(s.requests) == 2
    assert key_and_body(s.requests[0]) == key_and_body(s.requests[1])


def test_read_timeouts_are_not_retried_without_a_key(
    flavor: str, servers: list[FaultServer]
) -> None:
    s = server(servers, "hang", "ok")
    unkeyed = FAST.replace(keyed_methods=frozenset())
    with pytest.raises(httpx.ReadTimeout):
        post(flavor, s.url + "/charges", retry=unkeyed, timeout=httpx.Timeout(2.0, read=0.2))
    assert len(s.requests) == 1  # it may have run: a blind repeat could charge twice


def test_the_deadline_bounds_a_hanging_server(flavor: str, servers: list[FaultServer]) -> None:
    s = server(servers, "hang")
    retry = FAST.replace(deadline=0.5, attempts=10)
    with pytest.raises(RetriesExhausted):
        post(flavor, s.url + "/charges", retry=retry, timeout=httpx.Timeout(30.0))
    # Each attempt's timeout was cut to what was left of the 0.5 s deadline.
    assert 1 <= len(s.requests) <= 3

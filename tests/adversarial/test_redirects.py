"""A redirect to another origin carries neither the key nor the credentials (security review).

httpx drops ``Authorization`` when it follows a redirect to another origin, and nothing else:
through an idempotent transport the ``Idempotency-Key``, an ``X-Api-Key`` and a
``Proxy-Authorization`` reached whatever host the redirect named. Two real servers on
loopback (different ports: different origins): A redirects, B records what it received.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kit.servers import serve_asgi
from retrysafe.client import IdempotentTransport
from retrysafe.client.dlq import DeadLetterQueue

CREDENTIALS = {
    "Authorization": "Bearer alice",
    "X-Api-Key": "ak-secret",
    "Proxy-Authorization": "Basic cHJveHk=",
    "X-Tenant-Secret": "ts-secret",  # redacted by the queue's configuration below
}
KEY = "8b0f5e2c-0d4e-4d43-9a43-6c4f2b8e7a11"


class Recorder:
    """An app that redirects to ``target`` (if set) and records each request's headers."""

    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.target = ""
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.seen.append(headers)
        redirect = self.status and scope["path"] == "/charges"
        status = self.status if redirect else 201
        out = [(b"location", self.target.encode())] if redirect else []
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def far() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with serve_asgi(recorder) as base:
        yield base, recorder


def post_through_redirect(status: int, target: str, tmp: Any) -> list[dict[str, str]]:
    near = Recorder(status)
    with serve_asgi(near) as base:
        near.target = target if target.startswith("http") else base + target
        dlq = DeadLetterQueue(tmp / "dlq.db", redact={"X-Tenant-Secret"})
        transport = IdempotentTransport(dlq=dlq)
        headers = {**CREDENTIALS, "Idempotency-Key": KEY}
        with httpx.Client(transport=transport, follow_redirects=True, headers=headers) as client:
            response = client.post(base + "/charges", json={"cents": 500})
        dlq.close()
    assert response.status_code == 201
    assert near.seen[0]["idempotency-key"] == KEY  # the first hop: everything, as sent
    assert near.seen[0]["x-api-key"] == "ak-secret"
    return near.seen


@pytest.mark.parametrize("status", [307, 308, 303, 302])
def test_a_redirect_to_another_origin_carries_no_key_or_credentials(
    status: int, far: tuple[str, Recorder], tmp_path: Any
) -> None:
    base, recorder = far
    assert len(post_through_redirect(status, base + "/landed", tmp_path)) == 1
    (landed,) = recorder.seen
    for name in CREDENTIALS:
        assert name.lower() not in landed, f"{name} was sent to another origin"
    assert landed.get("idempotency-key") != KEY
    if status in (307, 308):  # still a POST: a key of its own, derived, stable
        assert landed["idempotency-key"]
        post_through_redirect(status, base + "/landed", tmp_path)
        assert recorder.seen[1]["idempotency-key"] == landed["idempotency-key"]
    else:  # now a GET
        assert "idempotency-key" not in landed


def test_a_redirect_within_the_origin_keeps_the_key_and_credentials(tmp_path: Any) -> None:
    _, landed = post_through_redirect(307, "/landed", tmp_path)
    assert landed["idempotency-key"] == KEY  # the same operation, at the same server
    assert landed["x-api-key"] == "ak-secret"
    assert landed["authorization"] == "Bearer alice"

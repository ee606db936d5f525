"""The upstream process dies mid-request: the client gets a defined answer, a retry runs."""

from __future__ import annotations

import uuid

import httpx
import pytest

from kit.gateway import GatewayFactory, Upstream


def test_crash_before_answering_is_a_502_and_the_retry_runs(
    gateway: GatewayFactory, own_upstream: Upstream
) -> None:
    gw = gateway(upstream=own_upstream.url)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        first = client.post("/crash/a", content=b"order", headers=key)
        assert own_upstream.wait_exit() == 1
        assert first.status_code == 502
        assert first.headers["content-type"] == "application/problem+json"
        assert first.json()["type"].endswith(":upstream-failed")
        own_upstream.start()  # same port
        retry = client.post("/crash/a", content=b"order", headers=key)
        again = client.post("/crash/a", content=b"order", headers=key)
    assert retry.status_code == 200  # the 502 released the claim, so the retry ran
    assert "idempotent-replayed" not in retry.headers
    assert again.headers.get("idempotent-replayed") == "true"
    assert own_upstream.count("/crash/a") == 2


def test_crash_mid_response_breaks_the_connection_and_the_retry_runs(
    gateway: GatewayFactory, own_upstream: Upstream
) -> None:
    gw = gateway(upstream=own_upstream.url)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        # Status and first chunk were already on their way: the only honest answer left is a
        # broken response, never one that looks complete.
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/crash-mid/b", headers=key)
        assert own_upstream.wait_exit() == 1
        own_upstream.start()
        retry = client.post("/crash-mid/b", headers=key)
    assert retry.status_code == 200  # released, not stored as unreplayable: the retry ran
    assert retry.json() == {"survived": True}
    assert own_upstream.count("/crash-mid/b") == 2
    assert gw.app.metrics.upstream_errors["aborted"] == 1

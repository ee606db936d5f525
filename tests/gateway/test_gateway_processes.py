"""Gateways as separate OS processes (``python -m retrysafe.cli proxy``) sharing one store."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from kit.gateway import GatewayProcess, Upstream, wait_for
from kit.stores import require_service

pytestmark = pytest.mark.slow


async def fire_20_over(gateways: list[GatewayProcess], upstream: Upstream) -> None:
    """20 concurrent duplicates spread over ``gateways`` reach the upstream once."""
    name = uuid.uuid4().hex
    key = {"Idempotency-Key": uuid.uuid4().hex}
    clients = [httpx.AsyncClient(base_url=g.url, timeout=30) for g in gateways]
    async with httpx.AsyncClient(base_url=upstream.url, timeout=30) as control:
        try:
            calls = [
                asyncio.create_task(
                    clients[i % len(clients)].post(f"/gate/{name}", content=b"x", headers=key)
                )
                for i in range(20)
            ]
            await wait_for(control.get(f"/_started/{name}"), 20)
            await control.post(f"/_open/{name}")
            answers = await wait_for(asyncio.gather(*calls), 30)
        finally:
            for client in clients:
                await client.aclose()
    assert upstream.count(f"/gate/{name}") == 1
    assert {(a.status_code, a.content) for a in answers} == {(201, answers[0].content)}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19


async def test_two_gateway_processes_share_a_sqlite_store(
    tmp_path: Path, upstream: Upstream
) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    gateways = [GatewayProcess("--upstream", upstream.url, "--store", store) for _ in range(2)]
    try:
        await fire_20_over(gateways, upstream)
    finally:
        for g in gateways:
            g.stop()


async def test_two_gateway_processes_share_a_redis_store(upstream: Upstream) -> None:
    from retrysafe import open_store
    from retrysafe.errors import StoreError

    url = "redis://127.0.0.1:6379/0"
    try:
        probe = open_store(url)
        probe.get("probe")
        probe.close()
    except StoreError as exc:
        require_service("redis", str(exc))
    gateways = [GatewayProcess("--upstream", upstream.url, "--store", url) for _ in range(2)]
    try:
        await fire_20_over(gateways, upstream)
    finally:
        for g in gateways:
            g.stop()


async def test_workers_mode_serves_duplicates_once(tmp_path: Path, upstream: Upstream) -> None:
    """``--workers 2``: uvicorn's multi-process mode, each worker with its own store handle."""
    store = f"sqlite:///{tmp_path / 'workers.db'}"
    gateway = GatewayProcess("--upstream", upstream.url, "--store", store, "--workers", "2")
    try:
        await fire_20_over([gateway], upstream)
    finally:
        assert gateway.stop() in (0, -signal.SIGTERM)


async def test_graceful_shutdown_finishes_in_flight_requests(
    tmp_path: Path, upstream: Upstream
) -> None:
    """SIGTERM while a request is at the upstream: it completes, then the process exits 0,
    and the record it completed replays from another gateway on the same store."""
    store = f"sqlite:///{tmp_path / 'graceful.db'}"
    name = uuid.uuid4().hex
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = GatewayProcess("--upstream", upstream.url, "--store", store)
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as client,
        httpx.AsyncClient(base_url=upstream.url, timeout=30) as control,
    ):
        call = asyncio.create_task(client.post(f"/gate/{name}", content=b"x", headers=key))
        await wait_for(control.get(f"/_started/{name}"), 20)
        first.proc.send_signal(signal.SIGTERM)
        # Shutdown has begun (uvicorn logs it) before the upstream is allowed to answer.
        await asyncio.to_thread(first.wait_for_line, "Shutting down")
        await control.post(f"/_open/{name}")
        answer = await wait_for(call, 30)
    assert answer.status_code == 201
    # uvicorn re-raises the signal it caught once shutdown is done, so -SIGTERM is a clean exit.
    assert await asyncio.to_thread(first.stop) in (0, -signal.SIGTERM)
    first.wait_for_line("Application shutdown complete")  # lifespan closed client and store
    second = GatewayProcess("--upstream", upstream.url, "--store", store)
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
            replay = await client.post(f"/gate/{name}", content=b"x", headers=key)
    finally:
        second.stop()
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.content == answer.content
    assert upstream.count(f"/gate/{name}") == 1


async def test_shutdown_timeout_releases_the_claims_of_cancelled_requests(
    tmp_path: Path, upstream: Upstream
) -> None:
    """A request still running when the shutdown timeout ends is cancelled and its claim is
    released, so the client's retry runs at once instead of waiting for the lease to lapse."""
    config = tmp_path / "gw.toml"
    config.write_text(
        f'shutdown_timeout = "1s"\nstore = "sqlite:///{tmp_path / "s.db"}"\n'
        '[policy]\nanonymous = "shared"\n'  # no credentials: one explicit shared scope
    )
    name = uuid.uuid4().hex
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = GatewayProcess("--upstream", upstream.url, "--config", str(config))
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as client,
        httpx.AsyncClient(base_url=upstream.url, timeout=30) as control,
    ):
        call = asyncio.create_task(client.post(f"/gate/{name}", content=b"x", headers=key))
        await wait_for(control.get(f"/_started/{name}"), 20)
        first.proc.send_signal(signal.SIGTERM)
        cut_off = await asyncio.gather(call, return_exceptions=True)
        await asyncio.to_thread(first.stop)
        await control.post(f"/_open/{name}")
        second = GatewayProcess("--upstream", upstream.url, "--config", str(config))
        try:
            retry = await client.post(
                f"http://127.0.0.1:{second.port}/gate/{name}", content=b"x", headers=key
            )
        finally:
            second.stop()
    outcome = cut_off[0]
    assert isinstance(outcome, httpx.HTTPError) or outcome.status_code >= 500, outcome
    assert retry.status_code == 201  # not 409: the claim was released, not left to lapse
    assert "idempotent-replayed" not in retry.headers
    assert upstream.count(f"/gate/{name}") == 2

"""The demo's fault layer, over real HTTP: losses happen after the handler ran, bursts before."""

from __future__ import annotations

import httpx
import pytest

from retrysafe.cli._demo.faults import FaultLayer
from retrysafe.cli._demo.payments import PaymentsLedger, build_payments_app
from retrysafe.cli._demo.plan import Faults
from retrysafe.cli._demo.server import serving
from retrysafe.stores.memory import MemoryStore

NONE = Faults(loss_rate=0.0, burst_rate=0.0, latency_ms=0.0, slow_rate=0.0)
ORDER = {"order": "ord-1", "customer": "cus-1", "sku": "cable", "cents": 900}
KEY = "7d3f8a52-5b0e-4a4e-9d8e-1f6f1d0b2c11"


async def test_a_lost_answer_was_produced_and_stored_first() -> None:
    ledger = PaymentsLedger()
    layer = FaultLayer(
        build_payments_app(ledger, store=MemoryStore()), Faults(loss_rate=1.0, latency_ms=0.0)
    )
    async with serving(layer) as url, httpx.AsyncClient(base_url=url) as client:
        # The payments API's default Policy files keys under the caller's Authorization.
        headers = {"Idempotency-Key": KEY, "Authorization": "Bearer sk_test_agent"}
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/purchases", json=ORDER, headers=headers, timeout=0.3)
        # The charge was made although its answer never came ...
        assert [order for _, order, _ in ledger.charges] == ["ord-1"]
        layer.faults = NONE
        retry = await client.post(
            "/purchases", json=ORDER, headers={**headers, "Idempotency-Attempt": "2"}
        )
    # ... and retrysafe had stored it: the retry is a replay of that very charge.
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["charge"] == ledger.charges[0][0]
    assert len(ledger.charges) == 1
    counts = layer.counts
    assert (counts.attempts, counts.retries, counts.lost, counts.replays) == (2, 1, 1, 1)


async def test_a_503_burst_never_reaches_the_app() -> None:
    ledger = PaymentsLedger()
    faults = Faults(burst_rate=1.0, burst_seconds=60.0, latency_ms=0.0, loss_rate=0.0)
    layer = FaultLayer(build_payments_app(ledger, store=None), faults)
    async with serving(layer) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post("/purchases", json=ORDER)
        second = await client.post("/purchases", json=ORDER)
    assert first.status_code == second.status_code == 503
    assert first.headers["content-type"] == "application/problem+json"
    assert first.json()["status"] == 503
    assert ledger.charges == []
    assert (layer.counts.bursts, layer.counts.unavailable) == (1, 2)


async def test_without_the_middleware_every_attempt_charges() -> None:
    ledger = PaymentsLedger()
    layer = FaultLayer(build_payments_app(ledger, store=None), NONE)
    async with serving(layer) as url, httpx.AsyncClient(base_url=url) as client:
        answers = [
            await client.post("/purchases", json=ORDER, headers={"Idempotency-Key": KEY})
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [201, 201]
    assert len({a.json()["charge"] for a in answers}) == 2
    assert ledger.duplicates() == 1
    assert ledger.overcharged_cents() == 900


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss_rate": 1.5}, "loss_rate must be between 0 and 1"),
        ({"burst_seconds": -1.0}, "burst_seconds must not be negative"),
    ],
)
def test_fault_settings_are_checked(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults(**changes)

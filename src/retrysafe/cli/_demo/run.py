"""``retrysafe demo``: serve the payments API, fire the scenarios at it, report what happened."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from retrysafe.cli._demo.app import Ledger, build_app
from retrysafe.cli._demo.scenarios import SCENARIOS, Context, ScenarioResult, run_scenario
from retrysafe.cli._demo.server import serving
from retrysafe.errors import StoreUnavailable
from retrysafe.stores import DualStore
from retrysafe.stores.url import open_store
from retrysafe.testing import RecordingStore

HOLD_TTL = 0.5  # seconds; the /holds policy's TTL, short so the demo shows expiry quickly
_PROBE_ID = "0" * 64  # a store id no request derives: reading it only checks the store answers
DEADLINE = 60.0  # the whole demo; it normally takes a couple of seconds
# The merchant's API key: the default Policy files each key under the caller's Authorization.
DEMO_CREDENTIALS = {"Authorization": "Bearer demo-merchant-key"}


@dataclass
class DemoReport:
    store_url: str
    url: str = ""
    scenarios: list[ScenarioResult] = field(default_factory=list)
    charges: int = 0
    charged_twice: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.charged_twice and all(s.ok for s in self.scenarios)


async def run_demo(store_url: str | None = None, *, store: DualStore | None = None) -> DemoReport:
    """Run every scenario against a fresh app; the store defaults to SQLite in a temp dir.

    ``store`` (an already open store) wins over ``store_url``. A store the demo opened itself
    is closed at the end; one passed in is left open.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrysafe-demo-") as tmp:
        owned = store is None
        if store is None:
            store = open_store(store_url or f"sqlite:///{Path(tmp) / 'demo.db'}")
        recording = RecordingStore(store)
        ledger = Ledger()
        report = DemoReport(store.url)
        try:
            # An unreachable store would fail every scenario: say so up front instead.
            try:
                await store.aget(_PROBE_ID)
            except StoreUnavailable as exc:
                raise StoreUnavailable(f"the demo's store is unreachable: {exc}") from exc
            async with asyncio.timeout(DEADLINE):
                app = build_app(recording, ledger, hold_ttl=HOLD_TTL)
                async with (
                    serving(app) as url,
                    httpx.AsyncClient(
                        base_url=url, headers=DEMO_CREDENTIALS, trust_env=False
                    ) as client,
                ):
                    report.url = url
                    ctx = Context(client, ledger, recording, HOLD_TTL)
                    for scenario in SCENARIOS:
                        report.scenarios.append(await run_scenario(scenario, ctx))
        finally:
            if owned:
                await store.aclose()
    report.charges = len(ledger.charges)
    report.charged_twice = ledger.charged_twice()
    report.seconds = time.perf_counter() - started
    return report

"""Fixtures for the gateway tests (helpers live in ``kit/gateway.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.gateway import (
    GatewayFactory,
    ManualClock,
    RunningGateway,
    Upstream,
    serve_in_thread,
)
from retrysafe.gateway import GatewayConfig, create_app
from retrysafe.gateway._config import RoutePolicy
from retrysafe.stores._base import DualStore
from retrysafe.stores.sqlite import SQLiteStore


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("upstream") / "executions.log").start()
    yield up
    up.stop()


@pytest.fixture
def own_upstream(tmp_path: Path) -> Iterator[Upstream]:
    """An upstream this test may crash and restart (on the same port)."""
    up = Upstream(tmp_path / "executions.log").start()
    yield up
    up.stop()


@pytest.fixture
def gateway(tmp_path: Path, upstream: Upstream) -> Iterator[GatewayFactory]:
    """Start in-process gateways: ``gateway(**config_fields)`` (upstream defaults to ours)."""
    stack: list[Any] = []

    def start(store: DualStore | None = None, **fields: Any) -> RunningGateway:
        fields.setdefault("upstream", upstream.url)
        fields.setdefault("store", f"sqlite:///{tmp_path / 'gateway.db'}")
        # Tests not about who owns a key send no credentials: one explicit shared scope.
        fields.setdefault("policy", RoutePolicy(anonymous="shared"))
        app = create_app(GatewayConfig(**fields), store=store)
        cm = serve_in_thread(app)
        url = cm.__enter__()
        stack.append(cm)
        return RunningGateway(app, url)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def clocked_store(tmp_path: Path) -> Iterator[tuple[SQLiteStore, ManualClock]]:
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "clocked.db", clock=clock)
    yield store, clock
    store.close()

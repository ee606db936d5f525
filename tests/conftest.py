"""Shared fixtures: every store kind of ``storekit.STORE_KINDS``, behind one ``kit`` fixture."""

from __future__ import annotations

import pytest

from retrysafe.stores.base import DualStore
from storekit import STORE_KINDS, StoreKit, kit_fixture, require_service
from wakekit import WakeProbe, probe_wakes

__all__ = ["STORE_KINDS", "StoreKit", "require_service"]


kit = kit_fixture(sorted(STORE_KINDS))


@pytest.fixture
def store(kit: StoreKit) -> DualStore:
    return kit.store


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> WakeProbe:
    """Polling off and every watch's notifier event observed (``wakekit.py``)."""
    return probe_wakes(monkeypatch)

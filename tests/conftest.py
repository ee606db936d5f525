"""Shared fixtures: every store kind of ``kit.stores.STORE_KINDS``, behind one ``kit`` fixture."""

from __future__ import annotations

import os

import pytest

from kit.stores import STORE_KINDS, StoreKit, kit_fixture, require_service
from kit.wakes import WakeProbe, probe_wakes
from retrysafe.stores._base import DualStore

__all__ = ["STORE_KINDS", "StoreKit", "require_service"]

# The suite runs as a deployment whose operator set the principal secret (docs/scopes.md), so
# no test's store round trips include creating the stored one; child processes inherit it.
# Tests of the stored secret remove it (tests/adversarial/test_credentials.py, tests/cli).
os.environ["RETRYSAFE_SECRET"] = "retrysafe-test-suite-principal-secret-0123456789"


kit = kit_fixture(sorted(STORE_KINDS))


@pytest.fixture
def store(kit: StoreKit) -> DualStore:
    return kit.store


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> WakeProbe:
    """Polling off and every watch's notifier event observed (``kit/wakes.py``)."""
    return probe_wakes(monkeypatch)

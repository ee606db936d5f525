"""Shared fixtures: every store kind of ``kit.stores.STORE_KINDS``, behind one ``kit`` fixture."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from kit.stores import STORE_KINDS, StoreKit, kit_fixture, require_service
from kit.wakes import WakeProbe, probe_wakes
from retrysafe.stores._base import DualStore
from retrysafe.telemetry import AUDIT_LOGGER

__all__ = ["STORE_KINDS", "StoreKit", "require_service"]

# The suite runs as a deployment whose operator set the principal secret (docs/scopes.md), so
# no test's store round trips include creating the stored one; child processes inherit it.
# Tests of the stored secret remove it (tests/adversarial/test_credentials.py, tests/cli).
os.environ["RETRYSAFE_SECRET"] = "retrysafe-test-suite-principal-secret-0123456789"


kit = kit_fixture(sorted(STORE_KINDS))


@pytest.fixture(autouse=True)
def audit_logger_untouched() -> Iterator[None]:
    """Fails the test that leaves the ``retrysafe.audit`` logger changed, and puts it back.

    A test once reset its level to NOTSET on the way out; the logger then inherited the root's
    WARNING and tests run later in the same worker found no audit line, while passing alone.
    Route the log with ``kit.telemetry.audit_to``, which restores everything.
    """
    logger = logging.getLogger(AUDIT_LOGGER)
    level, propagate, disabled, handlers = (
        logger.level,
        logger.propagate,
        logger.disabled,
        list(logger.handlers),
    )
    before = level, propagate, disabled, handlers
    yield
    after = logger.level, logger.propagate, logger.disabled, list(logger.handlers)
    if after != before:
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled
        logger.handlers[:] = handlers
        pytest.fail(
            f"the test left the audit logger (level, propagate, disabled, handlers) "
            f"at {after}, not {before}"
        )


@pytest.fixture
def store(kit: StoreKit) -> DualStore:
    return kit.store


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> WakeProbe:
    """Polling off and every watch's notifier event observed (``kit/wakes.py``)."""
    return probe_wakes(monkeypatch)

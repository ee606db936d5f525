"""Shared fixtures: every store kind of ``storekit.STORE_KINDS``, behind one ``kit`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from onceonly.stores.base import DualStore
from storekit import STORE_KINDS, StoreKit, require_service

__all__ = ["STORE_KINDS", "StoreKit", "require_service"]


@pytest.fixture(params=sorted(STORE_KINDS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
    made = STORE_KINDS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(kit: StoreKit) -> DualStore:
    return kit.store

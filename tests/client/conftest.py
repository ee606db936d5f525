"""Fixtures of the client tests; the harness itself is in kit/client_harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.dlq import dlq_url  # noqa: F401 (the DLQ-on-every-backend fixture)
from retrysafe.testing import set_testing


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_testing_mode() -> Iterator[None]:
    """Reset the process-wide testing switch around every test."""
    with set_testing(False):
        yield

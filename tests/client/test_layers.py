"""The client's decision modules do no I/O: drivers and the DLQ do it for them."""

from __future__ import annotations

import pytest

from unit.test_architecture import PACKAGE, imports_of, offending

PURE = ["_flow", "_retry", "_budget", "_breaker"]
FORBIDDEN = ["asyncio", "socket", "sqlite3", "retrysafe.client.dlq", "retrysafe.client._transport"]


@pytest.mark.parametrize("module", PURE)
def test_client_logic_does_no_io(module: str) -> None:
    found = imports_of(PACKAGE / "client" / f"{module}.py")
    assert offending(found, FORBIDDEN) == []


def test_the_retry_flow_imports_no_telemetry() -> None:
    found = imports_of(PACKAGE / "client" / "_flow.py")
    assert offending(found, ["opentelemetry", "retrysafe.client._telemetry"]) == []

"""Telemetry fixtures: real OTel SDK providers with in-memory exporters, one set per test, and
the audit log's lines (the classes are in tests/kit/telemetry.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.telemetry import AuditLines, Otel, audit_to, make_otel


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = make_otel()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


@pytest.fixture
def audit_log() -> Iterator[AuditLines]:
    with audit_to(AuditLines()) as handler:
        yield handler

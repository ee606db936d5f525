"""Telemetry fixtures: real OTel SDK providers with in-memory exporters, one set per test, and
the audit log's lines (the classes are in tests/kit/telemetry.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kit.telemetry import AuditLines, Otel, make_otel
from retrysafe.telemetry import AUDIT_LOGGER


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = make_otel()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


@pytest.fixture
def audit_log() -> Iterator[AuditLines]:
    logger = logging.getLogger(AUDIT_LOGGER)
    handler = AuditLines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)

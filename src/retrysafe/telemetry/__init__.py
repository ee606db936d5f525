"""Per-request instrumentation: OpenTelemetry spans and metrics, the audit log, cost (SPEC 31-34).

Adapters call :class:`Observation` only (:func:`observe` and :func:`observe_call` make one, or
the shared no-op ``NULL_OBSERVATION`` when telemetry is off); the core never imports telemetry
(CONTRIBUTING.md).
The offline report and the SLOs computed from the audit log are :mod:`retrysafe.report`.
``opentelemetry-api`` is the only dependency: without an SDK configured every call is a no-op.
Handlers, functions and tools report what their work cost with :func:`report_cost`.
"""

from __future__ import annotations

from retrysafe.telemetry._audit import AUDIT_LOGGER, AuditRecord
from retrysafe.telemetry._cost import COST_HEADER, report_cost
from retrysafe.telemetry._metrics import REQUEST_BUCKETS
from retrysafe.telemetry._observe import (
    DEFAULT_TELEMETRY,
    NULL_OBSERVATION,
    Observation,
    Telemetry,
    observe,
    observe_call,
)

__all__ = [
    "AUDIT_LOGGER",
    "COST_HEADER",
    "DEFAULT_TELEMETRY",
    "NULL_OBSERVATION",
    "REQUEST_BUCKETS",
    "AuditRecord",
    "Observation",
    "Telemetry",
    "observe",
    "observe_call",
    "report_cost",
]

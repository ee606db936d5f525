"""Per-request instrumentation: OpenTelemetry spans and metrics, the audit log, cost (SPEC 31-34).

Adapters call :class:`Observation` only; the core never imports telemetry (CONTRIBUTING.md).
The offline report and the SLOs computed from the audit log are :mod:`retrysafe.report`.
``opentelemetry-api`` is the only dependency: without an SDK configured every call is a no-op.
Handlers, functions and tools report what their work cost with :func:`report_cost`.
"""

from __future__ import annotations

from retrysafe.telemetry.audit import AUDIT_LOGGER, AuditRecord
from retrysafe.telemetry.cost import COST_HEADER, report_cost
from retrysafe.telemetry.observe import Observation, Telemetry

__all__ = ["AUDIT_LOGGER", "COST_HEADER", "AuditRecord", "Observation", "Telemetry", "report_cost"]

"""Telemetry: OpenTelemetry spans and metrics, and the audit log (SPEC rules 31-34).

Adapters call :class:`Observation` only; the core never imports telemetry (DESIGN.md arrows).
``opentelemetry-api`` is the only dependency: without an SDK configured every call is a no-op.
"""

from __future__ import annotations

from onceonly.telemetry.audit import AUDIT_LOGGER, AuditRecord
from onceonly.telemetry.observe import Observation, Telemetry

__all__ = ["AUDIT_LOGGER", "AuditRecord", "Observation", "Telemetry"]

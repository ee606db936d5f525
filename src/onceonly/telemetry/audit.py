"""The audit log: one JSON line per idempotency decision through stdlib logging (SPEC 34).

Enough to reconstruct what happened to an operation despite retries: key (or its hash),
scope hash, outcome, fingerprint hash, trace and span ids, attempt number, timings. Lines go to
the ``onceonly.audit`` logger at INFO; nothing is built when that logger is disabled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

AUDIT_LOGGER = "onceonly.audit"
log = logging.getLogger(AUDIT_LOGGER)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision. ``key`` is the raw key, or ``sha256:<hex>`` in hashed mode."""

    ts: float  # wall-clock time the decision was made (seconds since the epoch)
    surface: str  # "http", "function" or "tool"
    operation: str  # "POST /payments", or the function/tool name
    key: str
    scope: str  # hash of the scope (principal), never the credential itself
    fingerprint: str
    outcome: str  # SPEC 32 vocabulary
    billable: bool
    status: int | None = None
    attempt: int | None = None
    duration_s: float | None = None
    store_s: float | None = None
    trace_id: str | None = None
    span_id: str | None = None
    linked_trace_id: str | None = None  # the first execution, for replays
    linked_span_id: str | None = None
    cost: float | None = None  # cost of the execution, or the cost avoided by a replay

    def to_json(self) -> str:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)


def write(record: AuditRecord) -> None:
    log.info(record.to_json())

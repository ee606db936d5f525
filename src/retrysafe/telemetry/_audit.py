"""The audit log: one JSON line per idempotency decision through stdlib logging (SPEC 34).

Enough to reconstruct what happened to an operation despite retries: key (or its hash),
scope hash, outcome, fingerprint hash, trace and span ids, attempt number, timings, cost.
Lines go to the ``retrysafe.audit`` logger at INFO. It is opt-in: the logger does not
propagate, so the lines never land in the application's own logs (``logging.basicConfig(level=
logging.INFO)`` no longer prints a JSON line per request), and no line is even built until the
logger has a handler of its own (or is set to propagate again). A ``FileHandler`` added to it,
with the default ``%(message)s`` format, gives a file ``retrysafe report --log`` reads
(docs/observability.md).

No credential is ever written, nor anything a guess can be checked against: the scope is the
principal id, an HMAC of the principal under the deployment's secret (:mod:`retrysafe._scopes`,
:mod:`retrysafe._keyring`), and in hashed key mode the key is hashed too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields

AUDIT_LOGGER = "retrysafe.audit"
log = logging.getLogger(AUDIT_LOGGER)
# Opt-in: never into the application's own handlers by default (a handler added before this
# import stays, and still gets the lines). Set ``propagate = True`` after importing retrysafe
# (or in a dictConfig run later) to send them through the root logger's handlers instead.
log.propagate = False
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)  # adding a handler is then all it takes


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision. ``key`` is the raw key, or ``sha256:<hex>`` in hashed mode."""

    ts: float  # wall-clock time the decision finished (seconds since the epoch)
    surface: str  # "http", "function" or "tool"
    operation: str  # "POST /payments", or the function/tool name
    key: str
    scope: str  # the principal id (HMAC under the deployment secret), never the credential
    fingerprint: str
    outcome: str  # SPEC 32 vocabulary
    billable: bool
    status: int | None = None  # HTTP status sent (500 when the handler raised before one)
    attempt: int | None = None  # the client's attempt number, 1-based, when it sent one
    duration_s: float | None = None  # whole decision, arrival to finish
    store_s: float | None = None  # summed latency of claim/complete/release round trips
    wait_s: float | None = None  # time spent waiting for an in-flight first attempt
    trace_id: str | None = None
    span_id: str | None = None
    linked_trace_id: str | None = None  # the first execution, for replays
    linked_span_id: str | None = None
    cost: dict[str, float] | None = None  # per unit: spent (billable) or avoided (replay)
    run_id: str | None = None  # a tool call's durable agent run: who used the key
    lease_lost: str | None = None  # "taken_over" or "expired": the claim was lost mid-run

    def to_json(self) -> str:
        """One compact JSON object, fields in declaration order, None fields left out."""
        doc = {name: v for name in _FIELDS if (v := getattr(self, name)) is not None}
        return _encode(doc)


# dataclasses.asdict deep-copies every value: three times the cost of encoding the line.
_FIELDS = tuple(f.name for f in fields(AuditRecord))
_encode = json.JSONEncoder(separators=(",", ":")).encode


def enabled() -> bool:
    """Whether a line would go anywhere: a handler on the audit logger itself (or propagation
    turned back on) and INFO enabled. Otherwise no record is built at all."""
    return bool(log.handlers or log.propagate) and log.isEnabledFor(logging.INFO)


def write(record: AuditRecord) -> None:
    # makeRecord + handle is what log.info does, minus findCaller's walk up the stack: every
    # line comes from here anyway, so the caller's file and line carry no information.
    if log.disabled:
        return
    line = log.makeRecord(log.name, logging.INFO, __file__, 0, record.to_json(), (), None)
    log.handle(line)

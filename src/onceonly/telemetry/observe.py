"""One observation per keyed decision: span, metrics and audit line, from one place.

Adapters create a :class:`Observation` when a keyed request or call arrives, feed it what they
learn, and :meth:`Observation.finish` it once. Spans: when a recording span is already active
(``opentelemetry-instrumentation-asgi`` made one, or the caller did), it is enriched instead of
duplicated; otherwise onceonly starts its own.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from onceonly.outcomes import Outcome
from onceonly.telemetry import audit, metrics

KeyMode = Literal["raw", "hashed"]
_tracer = trace.get_tracer("onceonly")

ATTR_KEY = "onceonly.idempotency.key"
ATTR_OUTCOME = "onceonly.idempotency.outcome"
ATTR_BILLABLE = "onceonly.idempotency.billable"
ATTR_FINGERPRINT = "onceonly.idempotency.fingerprint"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """How an adapter reports. ``key_mode="hashed"`` never exposes raw keys (SPEC 32)."""

    key_mode: KeyMode = "raw"
    spans: bool = True
    audit: bool = True

    def observe(self, surface: str, operation: str) -> Observation:
        return Observation(self, surface, operation)

    def shown_key(self, key: str) -> str:
        if self.key_mode == "hashed":
            return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key


def _hex_ids(span: Span) -> tuple[str, str] | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class Observation:
    """The telemetry of one keyed decision."""

    __slots__ = (
        "_owned",
        "_span",
        "_started",
        "_store_s",
        "attempt",
        "fingerprint",
        "key",
        "linked",
        "operation",
        "scope",
        "settings",
        "surface",
    )

    def __init__(self, settings: Telemetry, surface: str, operation: str) -> None:
        self.settings, self.surface, self.operation = settings, surface, operation
        self._started = time.perf_counter()
        self._store_s = 0.0
        self.key = self.scope = self.fingerprint = ""
        self.attempt: int | None = None
        self.linked: tuple[str, str] | None = None
        current = trace.get_current_span()
        if current.is_recording() or not settings.spans:
            self._span, self._owned = current, False
        else:
            self._span = _tracer.start_span(f"onceonly {operation}", kind=SpanKind.INTERNAL)
            self._owned = True

    @property
    def trace_ids(self) -> tuple[str, str] | None:
        """(trace id, span id) to store with a first execution, so replays can link to it."""
        return _hex_ids(self._span)

    def keyed(self, key: str, scope: str, fingerprint: str) -> None:
        self.key, self.scope, self.fingerprint = key, scope, fingerprint
        if self._span.is_recording():
            self._span.set_attribute(ATTR_KEY, self.settings.shown_key(key))
            self._span.set_attribute(ATTR_FINGERPRINT, fingerprint)

    def store_time(self, seconds: float, operation: str) -> None:
        self._store_s += seconds
        metrics.store_latency(seconds, operation)

    def link_to(self, trace_id: str | None, span_id: str | None) -> None:
        """A replay links to the first execution's span (SPEC 32)."""
        if not trace_id or not span_id:
            return
        self.linked = (trace_id, span_id)
        if self._span.is_recording():
            ctx = SpanContext(
                int(trace_id, 16), int(span_id, 16), True, TraceFlags(TraceFlags.SAMPLED)
            )
            self._span.add_link(ctx, {"onceonly.link": "first_execution"})

    def finish(
        self, outcome: Outcome, status: int | None = None, cost: float | None = None
    ) -> None:
        duration = time.perf_counter() - self._started
        span = self._span
        if span.is_recording():
            span.set_attribute(ATTR_OUTCOME, outcome.value)
            span.set_attribute(ATTR_BILLABLE, outcome.billable)
        metrics.decision(self.surface, self.operation, outcome, duration, cost)
        if self.settings.audit and audit.enabled():
            ids = self.trace_ids
            audit.write(
                audit.AuditRecord(
                    ts=time.time(),
                    surface=self.surface,
                    operation=self.operation,
                    key=self.settings.shown_key(self.key),
                    scope=self.scope,
                    fingerprint=self.fingerprint,
                    outcome=outcome.value,
                    billable=outcome.billable,
                    status=status,
                    attempt=self.attempt,
                    duration_s=round(duration, 6),
                    store_s=round(self._store_s, 6),
                    trace_id=ids[0] if ids else None,
                    span_id=ids[1] if ids else None,
                    linked_trace_id=self.linked[0] if self.linked else None,
                    linked_span_id=self.linked[1] if self.linked else None,
                    cost=cost,
                )
            )
        if self._owned:
            span.end()


def span_context_of(trace_id: str, span_id: str) -> NonRecordingSpan:
    """A span standing for a stored first execution (for tests and tools)."""
    return NonRecordingSpan(
        SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(TraceFlags.SAMPLED))
    )


__all__ = ["Link", "Observation", "Telemetry", "span_context_of"]

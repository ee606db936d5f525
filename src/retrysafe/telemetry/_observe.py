"""One observation per keyed decision: span, metrics and audit line, from one place (SPEC 31-34).

Adapters create an :class:`Observation` when a keyed request or call arrives, feed it what
they learn, run the handler inside :meth:`Observation.active`, and :meth:`Observation.finish`
it exactly once with an outcome of SPEC 32.

Spans. An HTTP observation enriches the active span when one is recording (the server span
``opentelemetry-instrumentation-asgi``/``-wsgi`` made, or the caller's) instead of adding a
second span for the same request. Otherwise retrysafe starts its own span, lazily: a request
that turns out not to be keyed never creates one. Function and tool observations always
start their own span (a call is an operation of its own, nested under the caller's span).

Cost. With ``opentelemetry-api`` alone (no SDK configured) spans are non-recording and
instruments are proxies, so an observation costs a few attribute checks; ``bench/telemetry.py``
measures it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import (
    INVALID_SPAN,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue

from retrysafe import _completion as completion
from retrysafe._decide import Complete, Settlement
from retrysafe._outcomes import Outcome
from retrysafe._records import CACHE_HIT, Previous, StoredResponse
from retrysafe.telemetry import _audit as audit
from retrysafe.telemetry import _cost as cost
from retrysafe.telemetry._metrics import ATTR_COMPLETION, Instruments, default_instruments

KeyMode = Literal["raw", "hashed"]
OperationNamer = Callable[[str, str], str]

# The key and the outcome use the plain names operators query across libraries; they are
# stable (docs/observability.md). What is specific to retrysafe keeps its own namespace.
ATTR_KEY = "idempotency.key"
ATTR_OUTCOME = "idempotency.outcome"
ATTR_BILLABLE = "retrysafe.idempotency.billable"
ATTR_FINGERPRINT = "retrysafe.idempotency.fingerprint"
ATTR_ATTEMPT = "retrysafe.idempotency.attempt"
ATTR_COST = cost.COST_ATTRIBUTE
ATTR_COST_AVOIDED = "retrysafe.cost.avoided"
LINK_ROLE = "retrysafe.link"  # attribute on the replay's link: "first_execution"
EVENT_LEASE_LOST = "retrysafe.lease_lost"  # span event; its "reason" attribute says how
# Span events of an execution that is not a first one (docs/observability.md lists attributes):
EVENT_KEY_EXPIRED = "retrysafe.key_expired"  # the key was used before, but past its TTL
EVENT_LEASE_TAKEOVER = "retrysafe.lease_takeover"  # the previous holder went silent

_IDLE_RECHECK_S = 1.0
_MAX_ATTEMPT = 1_000_000  # a header is not trusted: anything larger is not an attempt number


def http_operation(method: str, path: str) -> str:
    """The default HTTP operation name, ``"POST /payments"``."""
    return f"{method} {path}"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """How an adapter reports: ``ASGIIdempotencyMiddleware(app, store=..., telemetry=Telemetry())``.

    - ``key_mode="hashed"`` puts ``sha256:<hex>`` of the key on spans and audit lines instead
      of the key itself (SPEC 32: a key is as sensitive as a request id).
    - ``spans=False``: never start a span of retrysafe's own (an active recording span is
      still enriched, since that costs nothing extra).
    - ``audit=False``: no audit lines even when the ``retrysafe.audit`` logger is enabled.
    - ``attempt_header``: the request header carrying the client's 1-based attempt number
      (retrysafe's client sends ``Idempotency-Attempt``); None to ignore it.
    - ``operation``: ``(method, path) -> name`` for HTTP operations. The default
      ``"METHOD path"`` is a metric attribute, so give a route template (``"POST /orders/{id}"``)
      when paths carry ids, or the metric series multiply.
    - ``tracer_provider`` / ``meter_provider``: default to the global providers.
    """

    key_mode: KeyMode = "raw"
    spans: bool = True
    audit: bool = True
    attempt_header: str | None = "Idempotency-Attempt"
    operation: OperationNamer = http_operation
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    tracer: Tracer = field(init=False, repr=False, compare=False)
    instruments: Instruments = field(init=False, repr=False, compare=False)
    _idle_cache: list[float] = field(init=False, repr=False, compare=False)  # [until, idle]

    def __post_init__(self) -> None:
        if self.key_mode not in ("raw", "hashed"):
            raise ValueError(f"key_mode must be 'raw' or 'hashed', not {self.key_mode!r}")
        tracer = trace.get_tracer("retrysafe", tracer_provider=self.tracer_provider)
        instruments = (
            default_instruments()
            if self.meter_provider is None
            else Instruments(self.meter_provider)
        )
        object.__setattr__(self, "tracer", tracer)
        object.__setattr__(self, "instruments", instruments)
        object.__setattr__(self, "_idle_cache", [0.0, 0.0])  # mutable cell in a frozen class

    def observe(
        self,
        surface: str,
        operation: str,
        *,
        attempt: int | None = None,
        span_name: str | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
        enrich: bool | None = None,
    ) -> Observation:
        """Start observing one decision. ``enrich`` defaults to True for ``surface="http"``."""
        return Observation(
            self,
            surface,
            operation,
            attempt,
            span_name or f"retrysafe {operation}",
            kind,
            attributes,
            surface == "http" if enrich is None else enrich,
        )

    def observe_http(
        self, method: str, path: str, headers: Iterable[tuple[str, str]]
    ) -> Observation:
        """An observation for a keyed HTTP request, its attempt number read from ``headers``."""
        return self.observe("http", self.operation(method, path), attempt=self.attempt_of(headers))

    def no_sdk(self) -> bool:
        """True while no tracer provider exists at all (API only): no span can record."""
        return self.tracer_provider is None and isinstance(
            trace.get_tracer_provider(), ProxyTracerProvider
        )

    def idle(self) -> bool:
        """Nothing would record an observation: no tracer or meter provider, no audit log.

        An application with ``opentelemetry-api`` alone then gets the no-op observation and
        pays one clock read per request. The answer is re-checked at most every
        ``_IDLE_RECHECK_S`` (the provider lookups read ``os.environ``): an SDK or audit handler
        configured after the middleware was built is picked up within a second (and one
        removed is noticed as late: observing a little longer is harmless).
        """
        cell = self._idle_cache
        now = time.monotonic()
        if now < cell[0]:
            return bool(cell[1])
        idle = (
            self.no_sdk()
            and self.meter_provider is None
            and _is_proxy(metrics.get_meter_provider())
            and not (self.audit and audit.enabled())
        )
        cell[1] = float(idle)  # the answer before its deadline: a racing reader sees both
        cell[0] = now + _IDLE_RECHECK_S
        return idle

    def shown_key(self, key: str) -> str:
        if self.key_mode == "hashed" and key:
            return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    def attempt_of(self, headers: Iterable[tuple[str, str]]) -> int | None:
        """The client's attempt number from ``attempt_header``, if it sent a sane one.

        ``headers`` have lowercase names, as both server adapters provide them.
        """
        name = self.attempt_header
        if name is None:
            return None
        name = name.lower()
        for k, v in headers:
            if k == name:  # both adapters hand over lowercase names (ASGI mandates them)
                v = v.strip()
                if v.isdigit() and len(v) <= 7 and 0 < int(v) <= _MAX_ATTEMPT:
                    return int(v)
                return None
        return None


DEFAULT_TELEMETRY = Telemetry()


def observe(
    telemetry: Telemetry | None, method: str, path: str, headers: Iterable[tuple[str, str]]
) -> Observation:
    """The adapters' entry point: a real HTTP observation, or the shared no-op one."""
    if telemetry is None or telemetry.idle():
        return NULL_OBSERVATION
    return telemetry.observe_http(method, path, headers)


def observe_call(
    telemetry: Telemetry | None,
    operation: str,
    *,
    tool: str | None = None,
    run_id: str | None = None,
    call_id: str | None = None,
) -> Observation:
    """The entry point of ``@idempotent`` (``tool=None``) and ``@idempotent_tool`` calls.

    Functions get a span ``retrysafe {operation}``; tools follow the GenAI conventions
    (SPEC 32): span ``execute_tool {name}``, kind INTERNAL, ``gen_ai.operation.name``,
    ``gen_ai.tool.name``, the durable ``agent_run`` id as ``gen_ai.conversation.id``, and
    ``gen_ai.tool.call.id`` only when the provider supplied one.
    """
    if telemetry is None or telemetry.idle():
        return NULL_OBSERVATION
    if tool is None:
        return telemetry.observe("function", operation)
    attrs: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
    }
    if run_id:
        attrs["gen_ai.conversation.id"] = run_id
    if call_id:
        attrs["gen_ai.tool.call.id"] = call_id
    obs = telemetry.observe("tool", tool, span_name=f"execute_tool {tool}", attributes=attrs)
    obs.run_id = run_id or None
    return obs


def _previous_event(span: Span, outcome: Outcome, previous: Previous) -> None:
    """The span event of an expired key run again, or of a takeover from a silent holder."""
    if outcome is Outcome.EXPIRED:
        span.add_event(
            EVENT_KEY_EXPIRED,
            {
                "retrysafe.key.first_used_at": previous.created_at,
                "retrysafe.key.expired_at": previous.ended_at,
                "retrysafe.key.expired_for_s": max(0.0, previous.now - previous.ended_at),
            },
        )
    elif outcome is Outcome.RECOVERED:
        attributes: dict[str, AttributeValue] = {
            "retrysafe.lease.previous_token": previous.token,
            "retrysafe.lease.previous_claimed_at": previous.created_at,
            "retrysafe.lease.lapsed_at": previous.ended_at,
        }
        if previous.silent_for is not None:
            attributes["retrysafe.lease.silent_for_s"] = max(0.0, previous.silent_for)
        span.add_event(EVENT_LEASE_TAKEOVER, attributes)


def _is_proxy(provider: MeterProvider) -> bool:
    # The API's placeholder until an SDK is set; its class is private, hence the name check.
    # Should it ever be renamed this returns False: observations happen, nothing breaks.
    return type(provider).__name__ == "_ProxyMeterProvider"


def _hex_ids(span: Span) -> tuple[str, str] | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class _Active:
    """Context manager of :meth:`Observation.active` (a class: cheaper than @contextmanager)."""

    __slots__ = ("_cost_token", "_ctx_token", "_obs")

    def __init__(self, obs: Observation) -> None:
        self._obs = obs

    def __enter__(self) -> None:
        obs = self._obs
        span = obs._span_now()
        self._ctx_token = (
            otel_context.attach(trace.set_span_in_context(span)) if obs._owned else None
        )
        meter = obs._meter = obs._meter or cost.CostMeter()
        meter.span = span  # costs go on the span as they are reported
        self._cost_token = cost._meter.set(meter)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cost._meter.reset(self._cost_token)
        if self._ctx_token is not None:
            otel_context.detach(self._ctx_token)
        obs = self._obs
        span = obs._span
        if (
            exc is not None
            and not isinstance(exc, StopIteration | GeneratorExit)  # ends of a WSGI body
            and obs._owned
            and span is not None
            and span.is_recording()
        ):
            span.record_exception(exc)


class Observation:
    """The telemetry of one keyed decision (one request, function call or tool call)."""

    __slots__ = (
        "_attributes",
        "_avoided",
        "_decided",
        "_done",
        "_enrich",
        "_kind",
        "_lease_lost",
        "_meter",
        "_name",
        "_owned",
        "_span",
        "_started",
        "_store_s",
        "_wait_s",
        "attempt",
        "fingerprint",
        "key",
        "linked",
        "operation",
        "run_id",
        "scope",
        "settings",
        "surface",
    )

    def __init__(
        self,
        settings: Telemetry,
        surface: str,
        operation: str,
        attempt: int | None = None,
        name: str = "",
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
        enrich: bool = True,
    ) -> None:
        self.settings, self.surface, self.operation = settings, surface, operation
        self.attempt = attempt
        self._started = time.perf_counter()
        self._store_s = self._wait_s = 0.0
        self.key = self.scope = self.fingerprint = ""
        self.run_id: str | None = None  # a tool call's agent run, for the per-client report
        self.linked: tuple[str, str] | None = None
        self._avoided: dict[str, float] = {}
        self._meter: cost.CostMeter | None = None  # made when the handler runs
        self._done = False
        self._decided: Outcome | None = None
        self._name, self._kind, self._attributes = name, kind, attributes
        self._enrich = enrich
        self._span: Span | None = None
        self._owned = False
        self._lease_lost: str | None = None

    def _span_now(self) -> Span:
        """The span this observation writes to, started on first use (lazily)."""
        if self._span is not None:
            return self._span
        if self.settings.no_sdk():
            self._span = INVALID_SPAN  # nothing could record: skip the proxy tracer's work
            return self._span
        current = trace.get_current_span()
        if self._enrich and current.is_recording():
            self._span = current
        elif self.settings.spans:
            # Started late, dated back to when the request arrived.
            start_ns = time.time_ns() - int((time.perf_counter() - self._started) * 1e9)
            self._span = self.settings.tracer.start_span(
                self._name, kind=self._kind, attributes=self._attributes, start_time=start_ns
            )
            # A non-recording span (no SDK, or not sampled) needs no context switch and no end.
            self._owned = self._span.is_recording()
        else:
            self._span = INVALID_SPAN
        span = self._span
        if span.is_recording() and self.attempt is not None:
            span.set_attribute(ATTR_ATTEMPT, self.attempt)
        return span

    @property
    def span(self) -> Span:
        return self._span_now()

    @property
    def trace_ids(self) -> tuple[str, str] | None:
        """(trace id, span id) to store with a first execution, so replays can link to it."""
        return _hex_ids(self._span_now())

    def keyed(self, key: str, scope: str, fingerprint: str) -> None:
        """The identity is known. ``scope`` is the principal id, a keyed hash of the principal
        (:mod:`retrysafe._scopes`): a reader without the deployment's secret cannot test a
        guessed credential against it."""
        self.key, self.scope, self.fingerprint = key, scope, fingerprint
        span = self._span_now()
        if span.is_recording():
            span.set_attribute(ATTR_KEY, self.settings.shown_key(key))
            span.set_attribute(ATTR_FINGERPRINT, fingerprint)

    def store_time(self, operation: str, seconds: float) -> None:
        """One store round trip took ``seconds``; a ``watch`` is waiting, not latency, and a
        claim answered by a process-local cache (``records.CACHE_HIT``) made no round trip."""
        if operation == CACHE_HIT:
            return
        if operation == "watch":
            self._wait_s += seconds
            return
        self._store_s += seconds
        self.settings.instruments.store_latency(operation, seconds)

    def link_to(self, trace_id: str | None, span_id: str | None) -> None:
        """Link to the first execution's span (SPEC 32); ids as stored in the record."""
        if not trace_id or not span_id:
            return
        try:
            ctx = SpanContext(
                int(trace_id, 16), int(span_id, 16), True, TraceFlags(TraceFlags.SAMPLED)
            )
        except ValueError:  # a record written by something else: no link rather than a 500
            return
        if not ctx.is_valid:
            return
        self.linked = (trace_id, span_id)
        span = self._span_now()
        if span.is_recording():
            span.add_link(ctx, {LINK_ROLE: "first_execution"})

    def replayed(self, response: StoredResponse) -> None:
        """A replay of ``response``: link to the first execution, note the cost it saved."""
        self.link_to(response.trace_id, response.span_id)
        self._avoided = cost.stored_cost(response.headers)

    def active(self) -> AbstractContextManager[None]:
        """Run the handler inside this: its spans nest under ours, :func:`report_cost` works."""
        return _Active(self)

    @property
    def cost(self) -> dict[str, float]:
        """What the execution reported so far, per unit."""
        return dict(self._meter.amounts) if self._meter else {}

    def stored_headers(self) -> tuple[tuple[str, str], ...]:
        """Internal headers to store with the record (the reported cost), for ``settle``."""
        amounts = self._meter.amounts if self._meter else None
        return ((cost.COST_HEADER, cost.encode(amounts)),) if amounts else ()

    def decided(self, outcome: Outcome, previous: Previous | None = None) -> None:
        """Put the outcome on the span now, before the handler runs.

        ``opentelemetry-instrumentation-asgi`` ends its server span as soon as the last body
        message is sent, which is before :meth:`finish` runs for an execution; attributes set
        after that would be lost. ``previous`` (an expired key's tombstone, a lapsed claim)
        becomes a span event, so back-ends can list and alert on re-executions.
        """
        self._decided = outcome
        span = self._span_now()
        if span.is_recording():
            span.set_attribute(ATTR_OUTCOME, outcome.value)
            span.set_attribute(ATTR_BILLABLE, outcome.billable)
            if previous is not None:
                _previous_event(span, outcome, previous)

    def executed(self, status: int | None) -> None:
        """Finish an execution with the outcome given to :meth:`decided`."""
        self.finish(self._decided or Outcome.EXECUTED, status)

    def annotate(self, settlement: Settlement) -> Settlement:
        """``settlement`` with this execution's trace ids and cost kept in the record.

        For adapters that build their :class:`~retrysafe._records.StoredResponse` themselves
        (functions and tools) instead of through ``settle(..., trace=, internal=)``.
        """
        if not isinstance(settlement, Complete):
            return settlement
        ids, extra = self.trace_ids, self.stored_headers()
        if ids is None and not extra:
            return settlement
        response = settlement.response
        trace_id, span_id = ids if ids is not None else (response.trace_id, response.span_id)
        return Complete(
            response._replace(
                headers=(*response.headers, *extra), trace_id=trace_id, span_id=span_id
            )
        )

    def lease_lost(self, reason: str) -> None:
        """The claim was lost while the handler ran (``lease.TAKEN_OVER`` or ``EXPIRED``):
        a span event now, a metric, and the audit line's ``lease_lost`` field.

        Called from a heartbeat (a renewal thread for sync adapters): OpenTelemetry's span
        and instruments are safe to use from any thread."""
        if self._lease_lost is not None:
            return
        self._lease_lost = reason
        span = self._span_now()
        if span.is_recording():
            span.add_event(EVENT_LEASE_LOST, {"reason": reason})
        self.settings.instruments.lease_lost(self.surface, self.operation, reason)

    def settled(self, settlement: Settlement, seconds: float) -> None:
        """The store took ``seconds`` to complete or release the record."""
        self.store_time("complete" if isinstance(settlement, Complete) else "release", seconds)

    def finish(self, outcome: Outcome, status: int | None = None) -> None:
        """Report the decision: span attributes, metrics, audit line. Later calls do nothing."""
        if self._done:
            return
        self._done = True
        duration = time.perf_counter() - self._started
        replay = outcome is Outcome.REPLAYED
        spent = self._avoided if replay else self.cost
        facts = completion.decision(outcome.value, status)
        span = self._span_now()
        if span.is_recording():
            span.set_attribute(ATTR_OUTCOME, outcome.value)
            span.set_attribute(ATTR_BILLABLE, outcome.billable)
            span.set_attribute(ATTR_COMPLETION, facts.completion.value)
            if spent:
                span.set_attribute(ATTR_COST_AVOIDED if replay else ATTR_COST, cost.encode(spent))
            if self._owned:
                if status is not None and self.surface == "http":
                    span.set_attribute("http.response.status_code", status)
                if outcome is Outcome.STORE_ERROR or (status is not None and status >= 500):
                    span.set_status(Status(StatusCode.ERROR, f"idempotency {outcome.value}"))
        self.settings.instruments.decision(
            self.surface, self.operation, outcome, duration, spent or None
        )
        if facts.ran and facts.succeeded:
            self.settings.instruments.completed(self.surface, self.operation, facts.completion)
        if self.settings.audit and audit.enabled():
            ids = _hex_ids(span)
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
                    wait_s=round(self._wait_s, 6) if self._wait_s else None,
                    trace_id=ids[0] if ids else None,
                    span_id=ids[1] if ids else None,
                    linked_trace_id=self.linked[0] if self.linked else None,
                    linked_span_id=self.linked[1] if self.linked else None,
                    cost=spent or None,
                    run_id=self.run_id,
                    lease_lost=self._lease_lost,
                )
            )
        if self._owned:
            span.end()


_NO_CONTEXT: AbstractContextManager[None] = nullcontext()


class _NullObservation(Observation):
    """Telemetry turned off (``telemetry=None``): every method does nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Telemetry.__new__(Telemetry), "", "", enrich=False)
        self._span = INVALID_SPAN

    @property
    def trace_ids(self) -> tuple[str, str] | None:
        return None

    def keyed(self, key: str, scope: str, fingerprint: str) -> None:
        pass

    def store_time(self, operation: str, seconds: float) -> None:
        pass

    def link_to(self, trace_id: str | None, span_id: str | None) -> None:
        pass

    def replayed(self, response: StoredResponse) -> None:
        pass

    def decided(self, outcome: Outcome, previous: Previous | None = None) -> None:
        pass

    def executed(self, status: int | None) -> None:
        pass

    def annotate(self, settlement: Settlement) -> Settlement:
        return settlement

    def settled(self, settlement: Settlement, seconds: float) -> None:
        pass

    def lease_lost(self, reason: str) -> None:
        pass

    def active(self) -> AbstractContextManager[None]:
        return _NO_CONTEXT  # one shared instance: this runs on every keyed request

    def stored_headers(self) -> tuple[tuple[str, str], ...]:
        return ()

    def finish(self, outcome: Outcome, status: int | None = None) -> None:
        pass


NULL_OBSERVATION: Observation = _NullObservation()


__all__ = [
    "ATTR_BILLABLE",
    "ATTR_FINGERPRINT",
    "ATTR_KEY",
    "ATTR_OUTCOME",
    "DEFAULT_TELEMETRY",
    "EVENT_KEY_EXPIRED",
    "EVENT_LEASE_LOST",
    "EVENT_LEASE_TAKEOVER",
    "NULL_OBSERVATION",
    "Observation",
    "Telemetry",
    "http_operation",
    "observe",
    "observe_call",
]

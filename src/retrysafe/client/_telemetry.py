"""Client telemetry (SPEC 32, 33): one span per attempt, and counters without keys.

Attempts are sibling CLIENT spans under whatever span is current (the caller's, or an httpx
instrumentation's), each with ``http.request.resend_count`` after the first. Metrics never carry
the key. Everything is a no-op until an OpenTelemetry SDK is configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import httpx
from opentelemetry import metrics, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

_tracer = trace.get_tracer("retrysafe.client")
_meter = metrics.get_meter("retrysafe.client")

_retries = _meter.create_counter(
    "retrysafe.client.retries", unit="{attempt}", description="Attempts after the first"
)
_refusals = _meter.create_counter(
    "retrysafe.client.budget.refusals", unit="{attempt}", description="Retries refused by budget"
)
_transitions = _meter.create_counter(
    "retrysafe.client.breaker.transitions", unit="{transition}", description="Circuit changes"
)
_parked = _meter.create_counter(
    "retrysafe.client.dlq.parked", unit="{call}", description="Calls parked in the DLQ, by reason"
)


def observe(event: str, detail: str) -> None:
    """The retry flow's events (see ``_flow.Call.observe``)."""
    match event:
        case "retry":
            retry(detail)
        case "budget_refusal":
            budget_refusal(detail)
        case "parked":
            parked(detail)


def retry(host: str) -> None:
    _retries.add(1, {"server.address": host})


def budget_refusal(host: str) -> None:
    _refusals.add(1, {"server.address": host})


def breaker_transition(old: str, new: str) -> None:
    _transitions.add(1, {"retrysafe.breaker.from": old, "retrysafe.breaker.to": new})


def parked(reason: str) -> None:
    _parked.add(1, {"retrysafe.dlq.reason": reason})


def attempt_span(
    request: httpx.Request, number: int, key: str | None
) -> AbstractContextManager[Span]:
    """A span for attempt ``number`` (1-based) of ``request``.

    With the OpenTelemetry API alone (no SDK has set a tracer provider, SPEC 31), the API's
    tracer would hand back the caller's own current span, unchanged and not recording, after
    ~5 µs of context bookkeeping, a sixth of the transport's whole cost per request. So the
    span is skipped outright; checking costs one provider lookup (≈ 0.5 µs), done per attempt
    so that an SDK installed after this module was imported is used from its next attempt.
    """
    if isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return nullcontext(INVALID_SPAN)
    return _recording_span(request, number, key)


@contextmanager
def _recording_span(request: httpx.Request, number: int, key: str | None) -> Iterator[Span]:
    with _tracer.start_as_current_span(
        request.method, kind=SpanKind.CLIENT, record_exception=False
    ) as span:
        if span.is_recording():  # attributes cost microseconds: only build them for an SDK
            url = request.url
            if url.userinfo:
                url = url.copy_with(username=None, password=None)
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("server.address", url.host)
            span.set_attribute("url.full", str(url))
            if url.port is not None:
                span.set_attribute("server.port", url.port)
            if number > 1:
                span.set_attribute("http.request.resend_count", number - 1)
            if key is not None:
                span.set_attribute("idempotency.key", key)
        yield span


def attempt_result(span: Span, outcome: httpx.Response | BaseException) -> None:
    if not span.is_recording():
        return
    if isinstance(outcome, httpx.Response):
        span.set_attribute("http.response.status_code", outcome.status_code)
        if outcome.status_code >= 500:
            span.set_attribute("error.type", str(outcome.status_code))
            span.set_status(Status(StatusCode.ERROR))
    else:
        span.set_attribute("error.type", type(outcome).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(outcome)))

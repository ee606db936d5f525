"""Client telemetry (SPEC 32, 33, 35a): one span per attempt, and counters without keys.

Attempts are sibling CLIENT spans under whatever span is current (the caller's, or an httpx
instrumentation's), each with ``http.request.resend_count`` after the first. A keyed call's
completion (``once``, ``duplicated``, ``failed``, ``rejected``) goes on its last attempt's span
as ``retrysafe.completion`` and into ``retrysafe.client.calls``. Metrics never carry the key.
Everything is a no-op until an OpenTelemetry SDK is configured.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

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
_calls = _meter.create_counter(
    "retrysafe.client.calls",
    unit="{call}",
    description="Keyed calls by what became of their operation: once, duplicated, failed, "
    "rejected (a retry answered by the replay is one call, once)",
)
ATTR_COMPLETION = "retrysafe.completion"


def retry(host: str) -> None:
    _retries.add(1, {"server.address": host})


def budget_refusal(host: str) -> None:
    _refusals.add(1, {"server.address": host})


def breaker_transition(old: str, new: str) -> None:
    _transitions.add(1, {"retrysafe.breaker.from": old, "retrysafe.breaker.to": new})


def parked(reason: str) -> None:
    _parked.add(1, {"retrysafe.dlq.reason": reason})


class CallTelemetry:
    """The telemetry of one call: its attempt spans, and its completion (SPEC 35a).

    The latest attempt's span stays open after its answer came back, until the flow decides
    what to do with it: a retry ends it; the end of the call (``observe("completed")``) puts
    the completion on it first, since that attempt settled the call. The driver's ``close``
    ends a span still open when the call stops any other way (cancelled, an unexpected error).
    """

    __slots__ = ("_open", "_request")

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self._open: Span | None = None

    def attempt(
        self, request: httpx.Request, number: int, key: str | None
    ) -> AbstractContextManager[Span]:
        """A span for attempt ``number`` (1-based) of ``request``, current while it is sent.

        With the OpenTelemetry API alone (no SDK has set a tracer provider, SPEC 31), the API's
        tracer would hand back the caller's own current span, unchanged and not recording,
        after ~5 µs of context bookkeeping, a sixth of the transport's whole cost per request.
        So the span is skipped outright; checking costs one provider lookup (≈ 0.5 µs), done
        per attempt so that an SDK installed after this module was imported is used from its
        next attempt.
        """
        self.close()
        if isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
            return nullcontext(INVALID_SPAN)
        span = _tracer.start_span(request.method, kind=SpanKind.CLIENT)
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
        self._open = span
        return trace.use_span(span, end_on_exit=False, record_exception=False)

    def observe(self, event: str, detail: str) -> None:
        """The flow's events (see ``_flow.Call.observe``)."""
        match event:
            case "completed":
                span = self._open
                if span is not None and span.is_recording():
                    span.set_attribute(ATTR_COMPLETION, detail)
                self.close()
                request = self._request
                _calls.add(
                    1,
                    {
                        "server.address": request.url.host,
                        "http.request.method": request.method,
                        ATTR_COMPLETION: detail,
                    },
                )
            case "retry":
                self.close()
                retry(detail)
            case "budget_refusal":
                budget_refusal(detail)
            case "parked":
                parked(detail)

    def close(self) -> None:
        """End the open attempt span, if any."""
        if self._open is not None:
            self._open.end()
            self._open = None


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

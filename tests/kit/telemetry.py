"""What the telemetry tests observe with: real OpenTelemetry SDK providers with in-memory
exporters (:class:`Otel`), the audit log's lines (:class:`AuditLines`), and an ASGI app that
counts its runs (:class:`App`), and :func:`audit_to`, the one way tests route the audit log.

Providers are passed to :class:`Telemetry` explicitly, so no test touches the global providers
(which can be set only once per process) and tests stay independent. The fixtures ``otel`` and
``audit_log`` are in tests/telemetry/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from retrysafe.telemetry import AUDIT_LOGGER, Telemetry, report_cost

H = TypeVar("H", bound=logging.Handler)


@dataclass
class Otel:
    tracer_provider: TracerProvider
    exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    def telemetry(self, **options: Any) -> Telemetry:
        return Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def ours(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("retrysafe ")]

    def points(self) -> dict[str, list[Any]]:
        """Metric name -> its data points, from one collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


def make_otel() -> Otel:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader)


class AuditLines(logging.Handler):
    """Collects the audit log's JSON lines, parsed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@contextlib.contextmanager
def audit_to(handler: H) -> Iterator[H]:
    """The ``retrysafe.audit`` logger writing to ``handler`` at INFO, then exactly as it was.

    The level is set here rather than trusting the one retrysafe sets on import: a test that
    left the logger at NOTSET made it inherit the root's WARNING, and every later test in the
    same worker that only added a handler saw no line. Level, propagation and the disabled
    flag are all put back, so nothing leaks to the next test (tests/conftest.py checks).
    """
    logger = logging.getLogger(AUDIT_LOGGER)
    level, propagate, disabled = logger.level, logger.propagate, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


class App:
    """An ASGI app that counts its runs; status, body size, cost and failure are settable."""

    def __init__(self) -> None:
        self.runs = 0
        self.status = 201
        self.body = b'{"ok": true}'
        self.cost: float | None = None
        self.raise_exc = False
        self.gate: asyncio.Event | None = None
        self.inner_parent: int | None = None
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.runs += 1
        self.started.set()
        while (await receive()).get("more_body"):
            pass
        parent = trace.get_current_span().get_span_context()
        self.inner_parent = parent.span_id if parent.is_valid else None
        if self.gate is not None:
            await self.gate.wait()
        if self.cost is not None:
            report_cost(self.cost, "USD")
            report_cost(1200, "tokens")
        if self.raise_exc:
            raise RuntimeError("handler failed")
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": self.body})

"""Child process of tests/client/test_completion.py: a keyed call's completion against a real
server.

    python -m kit.client_completion_child SCENARIO FLAVOR AUDIT_LOG

The client's telemetry is on the global OpenTelemetry providers, which can be set only once per
process, hence a child. The server is the ASGI middleware under uvicorn (tests/kit/servers.py) on
a MemoryStore with a fake clock, writing its audit log to AUDIT_LOG. Its handler's first run
blocks until the client's first attempt has timed out: the client's ``sleep`` (called between
attempts) releases it, waits for the audit line of that run (the record is complete), and for
SCENARIO ``expired`` moves the store's clock past the TTL, so the retry runs the operation
again instead of getting the replay. SCENARIO ``unreachable`` calls a port nobody listens on
until the retries are spent. Prints the CallReport, the client's spans and the points of
``retrysafe.client.calls`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import threading
from typing import Any

import httpx
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kit.client_servers import free_port
from kit.servers import serve_asgi
from kit.stores import FakeClock
from retrysafe import Policy
from retrysafe._scopes import shared_scope
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentTransport,
    RetriesExhausted,
    RetryPolicy,
)
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry import AUDIT_LOGGER, Telemetry

TTL = 60.0
WAIT = 30.0  # bounds a hang only


class Runs(logging.Handler):
    """Counts the server's audit lines of runs, and lets a waiter wait for the n-th."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.runs = 0
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if json.loads(record.getMessage())["outcome"] in ("executed", "expired"):
            with self.changed:
                self.runs += 1
                self.changed.notify_all()

    def wait_for(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.runs >= n, WAIT), "no audit line"


def main() -> None:
    scenario, flavor, audit_path = sys.argv[1:4]
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    audit = logging.getLogger(AUDIT_LOGGER)
    audit.addHandler(logging.FileHandler(audit_path))
    runs = Runs()
    audit.addHandler(runs)

    clock = FakeClock(start=1_800_000_000.0)
    release = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if not release.is_set():  # the first run: answered only after the client gave up
            assert await asyncio.to_thread(release.wait, WAIT)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b'{"paid": true}'})

    server_otel = Telemetry(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    guarded = ASGIIdempotencyMiddleware(
        app,
        store=MemoryStore(clock=clock),
        policy=Policy(scope=shared_scope, ttl=TTL),
        telemetry=server_otel,
    )

    def pause(seconds: float) -> None:  # between attempts: the first one has timed out
        if scenario == "unreachable":
            return
        release.set()
        runs.wait_for(1)
        if scenario == "expired":
            clock.advance(TTL + 5)  # past the TTL, inside the tombstone's retention

    async def apause(seconds: float) -> None:
        await asyncio.to_thread(pause, seconds)

    retry = RetryPolicy(attempts=3, base=1.0)
    timeout = httpx.Timeout(WAIT, read=0.3)  # ends the first attempt; bounds nothing else

    def post(url: str) -> httpx.Response:
        if flavor == "sync":
            transport = IdempotentTransport(retry=retry, sleep=pause, rng=random.Random(7))
            with httpx.Client(transport=transport, timeout=timeout) as client:
                return client.post(url + "/pay", json={"cents": 500})

        async def call() -> httpx.Response:
            transport = AsyncIdempotentTransport(retry=retry, sleep=apause, rng=random.Random(7))
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
                return await client.post(url + "/pay", json={"cents": 500})

        return asyncio.run(call())

    response: httpx.Response | None = None
    if scenario == "unreachable":
        try:
            post(f"http://127.0.0.1:{free_port()}")
        except RetriesExhausted:
            pass
        else:
            raise AssertionError("a call to a closed port did not give up")
    else:
        with serve_asgi(guarded) as url:
            response = post(url)
    report = response.extensions["retrysafe"] if response is not None else None
    data = reader.get_metrics_data()
    points = [
        {"attributes": dict(p.attributes or {}), "value": p.value}
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "retrysafe.client.calls"
        for p in m.data.data_points
    ]
    spans = [
        {"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes or {})}
        for s in exporter.get_finished_spans()
    ]
    print(
        json.dumps(
            {
                "status": response.status_code if response is not None else None,
                "report": report
                and {
                    "key": report.key,
                    "attempts": report.attempts,
                    "outcome": report.outcome,
                    "replayed": report.replayed,
                    "completion": str(report.completion),
                    "completed_once": report.completed_once,
                },
                "calls": points,
                "spans": spans,
            }
        )
    )


if __name__ == "__main__":
    main()

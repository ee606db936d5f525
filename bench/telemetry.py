"""What telemetry adds to a keyed request: the ASGI middleware with telemetry off, on with no
OpenTelemetry SDK configured (the default for most users: API only, SPEC 31), and on with an
SDK recording spans and metrics into memory.

Raw ASGI calls in a loop, no network, ``MemoryStore``; a tiny raw ASGI handler so the figure
is the middleware's, not a framework's. Variants take turns run by run and the figures are
medians over runs, CPU time of this process (steadier than wall time on a shared machine).

    .venv/bin/python bench/telemetry.py            # 11 runs x 3,000 requests per variant
    .venv/bin/python bench/telemetry.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from retrysafe import Policy, shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry import AUDIT_LOGGER, Telemetry

BODY = b'{"amount": 500, "currency": "eur", "customer": "c-1"}'


async def handler(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"id": "p-1"}'})


POLICY = Policy(scope=shared_scope)  # one caller (the load loop): an explicit shared scope


def sdk_telemetry() -> Telemetry | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return None
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)


async def run(app: Any, keys: Callable[[int], bytes], n: int) -> float:
    """CPU seconds per request over ``n`` requests."""
    sent: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": BODY, "more_body": False}

    started = time.process_time()
    for i in range(n):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/payments",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"idempotency-key", keys(i)),
                (b"idempotency-attempt", b"1"),
            ],
        }
        await app(scope, receive, send)
        if i % 100 == 0:
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    assert set(sent) == {201}, set(sent)
    return elapsed / n


async def main(runs: int, n: int) -> None:
    variants: dict[str, Telemetry | None] = {"off": None, "on, no SDK": Telemetry()}
    # The audit log on (a NullHandler: the JSON line is built, then dropped), no SDK.
    variants["on, no SDK, audit log"] = Telemetry()
    sdk = sdk_telemetry()
    if sdk is not None:
        variants["on, SDK in memory"] = sdk
    audit_log = logging.getLogger(AUDIT_LOGGER)
    audit_log.addHandler(logging.NullHandler())
    audit_log.propagate = False
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs + 1):  # the first round is a warm-up
        for name, telemetry in variants.items():
            audit_log.setLevel(logging.INFO if "audit" in name else logging.WARNING)
            store = MemoryStore()
            app = ASGIIdempotencyMiddleware(
                handler, store=store, policy=POLICY, telemetry=telemetry
            )
            fresh = await run(app, lambda i: uuid.uuid4().hex.encode(), n)
            replay = await run(app, lambda i: b"same-key", n)
            results.setdefault((name, "first execution"), []).append(fresh)
            results.setdefault((name, "replay"), []).append(replay)
    print("| telemetry | path | CPU µs/request | + vs off |")
    print("|---|---|---:|---:|")
    for path in ("first execution", "replay"):
        base = statistics.median(results[("off", path)][1:])
        for name in variants:
            med = statistics.median(results[(name, path)][1:])
            print(f"| {name} | {path} | {med * 1e6:.1f} | {(med - base) * 1e6:+.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs x 300 requests")
    args = parser.parse_args()
    asyncio.run(main(3, 300) if args.quick else main(11, 3000))

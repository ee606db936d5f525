"""Child process of tests/client/test_spans.py: client attempt spans with an OpenTelemetry SDK
installed.

The transport module is imported (and its tracer taken) *before* the SDK's provider is set,
as in an application that configures telemetry at start-up after its imports. Prints the
finished spans as JSON.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from retrysafe.client import AsyncIdempotentTransport, IdempotentTransport, RetryPolicy


def script() -> httpx.MockTransport:
    answers = iter([503, 201])
    return httpx.MockTransport(lambda request: httpx.Response(next(answers)))


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    policy = RetryPolicy(base=0.0)
    keys = []
    with httpx.Client(transport=IdempotentTransport(script(), retry=policy)) as client:
        keys.append(client.post("http://user:pw@api.test/pay", content=b"{}").extensions)

    async def run() -> None:
        transport = AsyncIdempotentTransport(script(), retry=policy)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post("http://api.test/pay", content=b"{}")
            keys.append(response.extensions)

    asyncio.run(run())
    spans = [
        {
            "name": span.name,
            "kind": span.kind.name,
            "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
        }
        for span in exporter.get_finished_spans()
    ]
    print(json.dumps({"keys": [k["retrysafe"].key for k in keys], "spans": spans}))


if __name__ == "__main__":
    main()

"""Client attempt spans (SPEC 32): one CLIENT span per attempt with an SDK; none without."""

from __future__ import annotations

import json
import subprocess

import httpx
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from kit.children import child_argv, child_env
from retrysafe.client import IdempotentTransport, RetryPolicy


def test_without_an_sdk_every_attempt_runs_under_the_callers_span() -> None:
    """API only: no span of ours is made current, so propagation sees the caller's context."""
    caller = NonRecordingSpan(SpanContext(0x1234, 0x5678, False, TraceFlags(1)))
    seen: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(trace.get_current_span())
        return httpx.Response(503 if len(seen) == 1 else 201)

    transport = IdempotentTransport(httpx.MockTransport(handler), retry=RetryPolicy(base=0.0))
    with httpx.Client(transport=transport) as client, trace.use_span(caller):
        assert client.post("http://api.test/pay", content=b"{}").status_code == 201
    assert seen == [caller, caller]


def test_with_an_sdk_each_attempt_is_a_client_span() -> None:
    """In a child process: the SDK's provider is global and can be set only once."""
    child = subprocess.run(
        child_argv("client_span_child"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(child.stdout)
    spans = report["spans"]
    assert len(spans) == 4  # two calls (sync, async), two attempts each
    keys = [key for key in report["keys"] for _attempt in (1, 2)]
    for number, (span, key) in enumerate(zip(spans, keys, strict=True)):
        attrs = span["attributes"]
        assert span["name"] == "POST"
        assert span["kind"] == "CLIENT"
        assert attrs["idempotency.key"] == key
        assert attrs["server.address"] == "api.test"
        assert "pw@" not in attrs["url.full"]
        if number % 2 == 0:
            assert attrs["http.response.status_code"] == 503
            assert span["status"] == "ERROR"
            assert "http.request.resend_count" not in attrs
        else:
            assert attrs["http.response.status_code"] == 201
            assert span["status"] == "UNSET"
            assert attrs["http.request.resend_count"] == 1

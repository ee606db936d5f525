"""The WSGI middleware's telemetry mirrors the ASGI one (SPEC 31-34)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import pytest

from kit.telemetry import AuditLines, Otel
from retrysafe import Policy
from retrysafe._records import ClaimResult
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry import report_cost


class App:
    def __init__(self) -> None:
        self.runs = 0
        self.status = "201 Created"
        self.fail = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.runs += 1
        environ["wsgi.input"].read()
        report_cost(3, "tokens")
        if self.fail:
            raise RuntimeError("handler failed")
        start_response(self.status, [("Content-Type", "application/json")])
        return [b'{"ok": true}']


def call(
    app: Any, *, key: str | None = "k-1", body: bytes = b"{}", attempt: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/pay",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
    }
    if key is not None:
        environ["HTTP_IDEMPOTENCY_KEY"] = key
    if attempt is not None:
        environ["HTTP_IDEMPOTENCY_ATTEMPT"] = attempt
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, {k.lower(): v for k, v in headers}
        return lambda data: None

    result = app(environ, start_response)
    try:
        body_out = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], body_out


def test_execute_replay_link_cost_attempt(otel: Otel, audit_log: AuditLines) -> None:
    app = App()
    mw = WSGIIdempotencyMiddleware(
        app, store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    call(mw, attempt="1")
    status, headers, _ = call(mw, attempt="3")
    assert status.startswith("201")
    assert headers["idempotent-replayed"] == "true"
    assert "retrysafe-cost" not in headers
    assert app.runs == 1
    executed, replayed = otel.ours()
    assert executed.attributes is not None
    assert replayed.attributes is not None
    assert executed.attributes["idempotency.outcome"] == "executed"
    assert replayed.attributes["idempotency.outcome"] == "replayed"
    (link,) = replayed.links
    assert link.context.span_id == executed.context.span_id
    first, again = audit_log.docs()
    assert (first["attempt"], again["attempt"]) == (1, 3)
    assert first["cost"] == again["cost"] == {"tokens": 3.0}
    assert (first["billable"], again["billable"]) == (True, False)


def test_one_line_per_request_on_each_path(otel: Otel, audit_log: AuditLines) -> None:
    app = App()
    mw = WSGIIdempotencyMiddleware(
        app, store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    call(mw)  # executed
    call(mw)  # replayed
    call(mw, body=b'{"x": 1}')  # mismatch
    call(mw, key="a,b")  # rejected
    app.status = "500 Internal Server Error"
    call(mw, key="k-2")  # executed, released
    app.fail = True
    with pytest.raises(RuntimeError):
        call(mw, key="k-3")
    got = [(d["outcome"], d["status"]) for d in audit_log.docs()]
    assert got == [
        ("executed", 201),
        ("replayed", 201),
        ("mismatch", 422),
        ("rejected", 400),
        ("executed", 500),
        ("executed", 500),
    ]
    assert len(otel.ours()) == 6


class BrokenStore(MemoryStore):
    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize(("fail_open", "status"), [(False, 503), (True, 201)])
def test_store_error(otel: Otel, audit_log: AuditLines, fail_open: bool, status: int) -> None:
    mw = WSGIIdempotencyMiddleware(
        App(),
        store=BrokenStore(),
        policy=Policy(scope=shared_scope, fail_open=fail_open),
        telemetry=otel.telemetry(),
    )
    got, _, _ = call(mw)
    assert got.startswith(str(status))
    assert [(d["outcome"], d["status"]) for d in audit_log.docs()] == [("store_error", status)]

"""ASGI middleware telemetry: one observation per keyed request, on every path (SPEC 31-34)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from kit.asgi_call import call
from kit.children import child_argv, child_env
from kit.scopes import shared_id
from kit.stores import FakeClock
from kit.telemetry import App, AuditLines, Otel, make_otel
from retrysafe import Policy
from retrysafe._keyring import Keyring
from retrysafe._records import ClaimResult, Record, StoredResponse
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.telemetry import Telemetry
from retrysafe.telemetry._observe import DEFAULT_TELEMETRY, NULL_OBSERVATION, observe

OUTCOME = "idempotency.outcome"
BILLABLE = "retrysafe.idempotency.billable"
KEY = "idempotency.key"


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


async def test_first_execution_then_replay_links_to_it(otel: Otel, audit_log: AuditLines) -> None:
    app, store = App(), MemoryStore()
    mw = ASGIIdempotencyMiddleware(
        app, store=store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    first = await call(mw, headers=[("Idempotency-Attempt", "1")])
    again = await call(mw, headers=[("Idempotency-Attempt", "2")])
    assert (first.status, again.status, app.runs) == (201, 201, 1)
    executed, replayed = otel.ours()
    assert attrs(executed)[OUTCOME] == "executed"
    assert attrs(executed)[BILLABLE] is True
    assert attrs(replayed)[OUTCOME] == "replayed"
    assert attrs(replayed)[BILLABLE] is False
    assert attrs(executed)[KEY] == "k-1"
    assert (
        attrs(executed)["retrysafe.idempotency.fingerprint"]
        == (attrs(replayed)["retrysafe.idempotency.fingerprint"])
    )
    assert attrs(executed)["http.response.status_code"] == 201
    assert executed.name == "retrysafe POST /pay"
    assert executed.kind is SpanKind.INTERNAL
    # The record holds the first execution's ids, and the replay links to exactly that span.
    record = store.get(shared_id(store, "k-1"))
    assert record is not None
    assert record.response is not None
    assert (record.response.trace_id, record.response.span_id) == ids(executed)
    (link,) = replayed.links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == ids(
        executed
    )
    assert dict(link.attributes or {}) == {"retrysafe.link": "first_execution"}
    # Two requests, two audit lines, attempts recorded, the replay pointing at the original.
    first_doc, replay_doc = audit_log.docs()
    assert (first_doc["attempt"], replay_doc["attempt"]) == (1, 2)
    assert (replay_doc["linked_trace_id"], replay_doc["linked_span_id"]) == ids(executed)
    assert (first_doc["trace_id"], first_doc["span_id"]) == ids(executed)


async def test_handler_spans_nest_under_the_retrysafe_span(otel: Otel) -> None:
    app = App()
    mw = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(mw)
    (span,) = otel.ours()
    assert app.inner_parent == span.get_span_context().span_id


async def test_replay_links_across_store_handles_and_tracer_providers(
    kit: Any, otel: Otel, audit_log: AuditLines
) -> None:
    """Another handle on the same data (another process would have one) replays with a link."""
    app = App()
    first_mw = ASGIIdempotencyMiddleware(
        app, store=kit.store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(first_mw)
    other = make_otel()  # a second process has its own SDK and its own trace
    second_mw = ASGIIdempotencyMiddleware(
        app, store=kit.reopen(), telemetry=other.telemetry(), policy=Policy(scope=shared_scope)
    )
    answer = await call(second_mw)
    assert (answer.status, app.runs) == (201, 1)
    (executed,) = otel.ours()
    (replayed,) = other.ours()
    assert replayed.context.trace_id != executed.context.trace_id
    (link,) = replayed.links
    assert (link.context.trace_id, link.context.span_id) == (
        executed.context.trace_id,
        executed.context.span_id,
    )


async def test_mismatch_is_a_non_billable_client_error(otel: Otel, audit_log: AuditLines) -> None:
    mw = ASGIIdempotencyMiddleware(
        App(), store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(mw)
    answer = await call(mw, body=b'{"amount": 6}')
    assert answer.status == 422
    span = otel.ours()[-1]
    assert attrs(span)[OUTCOME] == "mismatch"
    assert attrs(span)[BILLABLE] is False
    assert [d["outcome"] for d in audit_log.docs()] == ["executed", "mismatch"]
    assert audit_log.docs()[1]["status"] == 422


@pytest.mark.parametrize(
    ("headers", "policy"),
    [
        ([("Idempotency-Key", "a,b")], Policy(scope=shared_scope)),  # a list is malformed (SPEC 3)
        (
            [],
            Policy(scope=shared_scope, required=True),
        ),  # missing on an endpoint that requires one (SPEC 11)
    ],
)
async def test_rejected(
    otel: Otel, audit_log: AuditLines, headers: list[tuple[str, str]], policy: Policy
) -> None:
    app = App()
    mw = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), policy=policy, telemetry=otel.telemetry()
    )
    answer = await call(mw, key=None, headers=headers)
    assert answer.status == 400
    assert app.runs == 0
    (span,) = otel.ours()
    assert attrs(span)[OUTCOME] == "rejected"
    (doc,) = audit_log.docs()
    assert (doc["outcome"], doc["status"], doc["billable"]) == ("rejected", 400, False)


async def test_body_too_large_is_rejected(otel: Otel, audit_log: AuditLines) -> None:
    mw = ASGIIdempotencyMiddleware(
        App(),
        store=MemoryStore(),
        policy=Policy(scope=shared_scope, max_body=4),
        telemetry=otel.telemetry(),
    )
    answer = await call(mw)
    assert answer.status == 413
    assert [(d["outcome"], d["status"]) for d in audit_log.docs()] == [("rejected", 413)]


async def test_no_key_no_observation(otel: Otel, audit_log: AuditLines) -> None:
    mw = ASGIIdempotencyMiddleware(
        App(), store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(mw, key=None)
    await call(mw, method="GET")
    assert otel.spans() == []
    assert audit_log.docs() == []


async def test_conflict_in_flight(otel: Otel, audit_log: AuditLines) -> None:
    app = App()
    app.gate = asyncio.Event()
    policy = Policy(scope=shared_scope, wait=0.05)
    mw = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), policy=policy, telemetry=otel.telemetry()
    )
    first = asyncio.create_task(call(mw))
    await app.started.wait()
    second = await call(mw)
    app.gate.set()
    assert (await first).status == 201
    assert second.status == 409
    outcomes = {d["outcome"]: d for d in audit_log.docs()}
    assert set(outcomes) == {"executed", "conflict_in_flight"}
    assert outcomes["conflict_in_flight"]["wait_s"] > 0  # it waited before refusing


async def test_server_error_and_exception_are_executed_with_500(
    otel: Otel, audit_log: AuditLines
) -> None:
    app = App()
    app.status = 503
    store = MemoryStore()
    mw = ASGIIdempotencyMiddleware(
        app, store=store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    assert (await call(mw)).status == 503
    app.raise_exc = True
    with pytest.raises(RuntimeError):
        await call(mw)
    assert [(d["outcome"], d["status"]) for d in audit_log.docs()] == [
        ("executed", 503),
        ("executed", 500),
    ]
    failed = otel.ours()[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    assert store.get(shared_id(store, "k-1")) is None  # released both times (SPEC 12)


class BrokenStore(MemoryStore):
    """A store whose database is down: every claim fails as a real backend's would."""

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize(("fail_open", "status"), [(False, 503), (True, 201)])
async def test_store_error(otel: Otel, audit_log: AuditLines, fail_open: bool, status: int) -> None:
    app = App()
    policy = Policy(scope=shared_scope, fail_open=fail_open)
    mw = ASGIIdempotencyMiddleware(
        app, store=BrokenStore(), policy=policy, telemetry=otel.telemetry()
    )
    assert (await call(mw)).status == status
    assert app.runs == (1 if fail_open else 0)
    (doc,) = audit_log.docs()
    assert (doc["outcome"], doc["status"]) == ("store_error", status)
    (span,) = otel.ours()
    assert span.status.status_code is StatusCode.ERROR


async def test_expired_and_recovered(otel: Otel, audit_log: AuditLines) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    policy = Policy(scope=shared_scope, ttl=10, lease=5)
    mw = ASGIIdempotencyMiddleware(App(), store=store, policy=policy, telemetry=otel.telemetry())
    await call(mw)
    clock.advance(11)
    await call(mw)  # past the TTL, inside the tombstone window: expired
    # A holder that died: its claim's lease lapses, the retry takes over.
    first = await call(mw, key="k-2")
    assert first.status == 201
    fp = audit_log.docs()[-1]["fingerprint"]
    store.claim(shared_id(store, "k-3"), fp, 5)
    clock.advance(6)
    await call(mw, key="k-3")
    outcomes = [d["outcome"] for d in audit_log.docs()]
    assert outcomes == ["executed", "expired", "executed", "recovered"]
    assert all(d["billable"] for d in audit_log.docs())


async def test_unreplayable(otel: Otel, audit_log: AuditLines) -> None:
    app = App()
    app.body = b"x" * 100
    policy = Policy(scope=shared_scope, max_cached_body=10)
    mw = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), policy=policy, telemetry=otel.telemetry()
    )
    await call(mw)
    answer = await call(mw)
    assert answer.status == 409
    assert app.runs == 1
    assert [d["outcome"] for d in audit_log.docs()] == ["executed", "unreplayable"]


async def test_cost_reported_stored_and_avoided(otel: Otel, audit_log: AuditLines) -> None:
    app = App()
    app.cost = 0.25
    store = MemoryStore()
    mw = ASGIIdempotencyMiddleware(
        app, store=store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(mw)
    replay = await call(mw)
    assert "retrysafe-cost" not in replay.headers  # internal: never replayed to the client
    executed, replayed = audit_log.docs()
    assert executed["cost"] == {"USD": 0.25, "tokens": 1200.0}
    assert executed["billable"]
    assert replayed["cost"] == {"USD": 0.25, "tokens": 1200.0}
    assert not replayed["billable"]
    spans = otel.ours()
    assert attrs(spans[0])["retrysafe.cost"] == "USD=0.25, tokens=1200.0"
    assert attrs(spans[1])["retrysafe.cost.avoided"] == "USD=0.25, tokens=1200.0"
    points = otel.points()
    avoided = {
        p.attributes["retrysafe.cost.unit"]: p.value for p in points["retrysafe.cost.avoided"]
    }
    assert avoided == {"USD": 0.25, "tokens": 1200.0}
    assert sum(p.value for p in points["retrysafe.replays"]) == 1


async def test_no_key_in_any_metric_attribute(otel: Otel) -> None:
    key = "very-secret-key-0123456789"
    mw = ASGIIdempotencyMiddleware(
        App(), store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    await call(mw, key=key)
    await call(mw, key=key)
    await call(mw, key=key, body=b"other")
    points = otel.points()
    assert {"retrysafe.requests", "retrysafe.request.duration", "retrysafe.store.duration"} <= set(
        points
    )
    hashed = hashlib.sha256(key.encode()).hexdigest()
    for name, data in points.items():
        for point in data:
            blob = json.dumps(dict(point.attributes), default=str)
            assert key not in blob, name
            assert hashed not in blob, name
    by_outcome = {
        p.attributes["idempotency.outcome"]: p.value for p in points["retrysafe.requests"]
    }
    assert by_outcome == {"executed": 1, "replayed": 1, "mismatch": 1}
    store_ops = {
        p.attributes["retrysafe.store.operation"] for p in points["retrysafe.store.duration"]
    }
    assert store_ops == {"claim", "complete"}


async def test_hashed_key_mode(otel: Otel, audit_log: AuditLines) -> None:
    mw = ASGIIdempotencyMiddleware(
        App(),
        store=MemoryStore(),
        telemetry=otel.telemetry(key_mode="hashed"),
        policy=Policy(scope=shared_scope),
    )
    await call(mw, key="secret-key")
    shown = "sha256:" + hashlib.sha256(b"secret-key").hexdigest()
    (span,) = otel.ours()
    assert attrs(span)[KEY] == shown
    assert audit_log.docs()[0]["key"] == shown
    assert "secret-key" not in audit_log.lines[0]


async def test_audit_line_fields(otel: Otel, audit_log: AuditLines) -> None:
    store = MemoryStore()
    mw = ASGIIdempotencyMiddleware(App(), store=store, telemetry=otel.telemetry())
    await call(mw, headers=[("Authorization", "Bearer top-secret")])
    (line,) = audit_log.lines
    assert "top-secret" not in line  # the scope is a keyed hash of the credential
    doc = json.loads(line)
    assert doc["scope"] != hashlib.sha256(b"Bearer top-secret").hexdigest()
    principals = Keyring(None).load(store)  # the suite's RETRYSAFE_SECRET
    assert doc["scope"] == principals.id_of("header:authorization\0Bearer top-secret")
    expected = {"ts", "surface", "operation", "key", "scope", "fingerprint", "outcome"}
    expected |= {"billable", "status", "duration_s", "store_s", "trace_id", "span_id"}
    assert expected <= set(doc)
    assert doc["surface"] == "http"
    assert doc["operation"] == "POST /pay"
    assert doc["duration_s"] >= doc["store_s"] > 0


async def test_enriches_the_asgi_instrumentation_server_span(otel: Otel) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app = App()
    app.cost = 0.5
    inner = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    outer = OpenTelemetryMiddleware(
        inner, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    await call(outer)
    await call(outer)
    assert otel.ours() == []  # no second span for the same request
    servers = [s for s in otel.spans() if s.kind is SpanKind.SERVER]
    assert [attrs(s)[OUTCOME] for s in servers] == ["executed", "replayed"]
    assert attrs(servers[0])[KEY] == "k-1"
    # The instrumentation ends its span with the last body message: the cost is set before.
    assert attrs(servers[0])["retrysafe.cost"] == "USD=0.5, tokens=1200.0"
    (link,) = servers[1].links
    assert link.context.span_id == servers[0].context.span_id


async def test_telemetry_off_and_no_sdk(audit_log: AuditLines) -> None:
    """telemetry=None does nothing; the default Telemetry() without an SDK stores no ids."""
    store = MemoryStore()
    off = ASGIIdempotencyMiddleware(
        App(), store=store, telemetry=None, policy=Policy(scope=shared_scope)
    )
    await call(off)
    assert audit_log.docs() == []
    DEFAULT_TELEMETRY._idle_cache[0] = 0.0  # forget an "idle" answer cached by another test
    default = ASGIIdempotencyMiddleware(
        App(), store=store, policy=Policy(scope=shared_scope)
    )  # global providers: no SDK set
    await call(default, key="k-2")
    (doc,) = audit_log.docs()
    assert doc["outcome"] == "executed"
    assert "trace_id" not in doc
    record = store.get(shared_id(store, "k-2"))
    assert record is not None
    assert record.response == StoredResponse(
        201, (("content-type", "application/json"),), b'{"ok": true}'
    )


def test_stored_ids_survive_sqlite(tmp_path: Any, otel: Otel) -> None:
    """SQLite keeps the first execution's ids (a fresh handle reads them back)."""
    path = tmp_path / "t.db"
    app = App()
    mw = ASGIIdempotencyMiddleware(
        app, store=SQLiteStore(path), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    asyncio.run(call(mw))
    (span,) = otel.ours()
    reader = SQLiteStore(path)
    record: Record | None = reader.get(shared_id(reader, "k-1"))
    assert record is not None
    assert record.response is not None
    assert (record.response.trace_id, record.response.span_id) == ids(span)


def test_idle_without_sdk_or_audit_is_the_null_observation(audit_log: AuditLines) -> None:
    """API only and nobody listening to the audit log: the no-op observation, nearly free."""
    import logging

    logging.getLogger("retrysafe.audit").setLevel(logging.WARNING)
    idle = Telemetry()
    assert observe(idle, "POST", "/pay", []) is NULL_OBSERVATION
    logging.getLogger("retrysafe.audit").setLevel(logging.INFO)
    assert observe(Telemetry(), "POST", "/pay", []) is not NULL_OBSERVATION


def test_replay_links_to_a_first_execution_in_another_process(tmp_path: Any, otel: Otel) -> None:
    import subprocess

    path = tmp_path / "shared.db"
    child = subprocess.run(
        child_argv("telemetry_first_execution_child", str(path)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first = json.loads(child.stdout)
    assert first["status"] == 201
    app = App()
    mw = ASGIIdempotencyMiddleware(
        app, store=SQLiteStore(path), telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    answer = asyncio.run(call(mw))
    assert answer.status == 201
    assert app.runs == 0  # the other process ran it
    (replayed,) = otel.ours()
    (link,) = replayed.links
    assert (link.context.trace_id, link.context.span_id) == (first["trace"], first["span"])
    assert replayed.context.trace_id != first["trace"]


async def test_a_custom_scope_is_logged_as_a_keyed_hash(otel: Otel, audit_log: AuditLines) -> None:
    policy = Policy(scope=lambda facts: f"user:{facts.header('x-user')}")
    store = MemoryStore()
    mw = ASGIIdempotencyMiddleware(App(), store=store, policy=policy, telemetry=otel.telemetry())
    await call(mw, headers=[("X-User", "alice@example.com")])
    (doc,) = audit_log.docs()
    assert doc["scope"] == Keyring(None).load(store).id_of("user:alice@example.com")
    assert doc["scope"] != hashlib.sha256(b"user:alice@example.com").hexdigest()
    assert "alice" not in audit_log.lines[0]


async def test_a_replay_from_the_local_cache_is_no_store_operation(otel: Otel) -> None:
    # stores/cached.py: a cached replay makes no store round trip, so the store latency
    # histogram holds the first execution's claim and completion only, while the replays
    # still count as replays.
    store = CachedStore(MemoryStore(), max_records=10)
    mw = ASGIIdempotencyMiddleware(
        App(), store=store, telemetry=otel.telemetry(), policy=Policy(scope=shared_scope)
    )
    first = await call(mw)
    replays = [await call(mw) for _ in range(3)]
    assert [r.body for r in replays] == [first.body] * 3
    assert store.cache.hits == 3
    points = otel.points()
    store_ops = [
        (p.attributes["retrysafe.store.operation"], p.count)
        for p in points["retrysafe.store.duration"]
    ]
    assert sorted(store_ops) == [("claim", 1), ("complete", 1)]
    by_outcome = {
        p.attributes["idempotency.outcome"]: p.value for p in points["retrysafe.requests"]
    }
    assert by_outcome == {"executed": 1, "replayed": 3}

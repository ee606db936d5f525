"""The store fails while a handler's result is saved, or while its lease is renewed.

Before: a completion that failed was logged and the answer sent as final; the record stayed in
flight, duplicates got 409 for the whole lease, and the next retry ran the handler again. And a
holder whose renewals could not reach the store past its lease (or were fenced out by a
takeover) was never told, while a duplicate ran alongside it.

Now a completion is retried within the lease; one that still cannot be stored is not presented
as final (503 problem in place of an unsent answer, an aborted connection for a started one);
and a lost lease is told to the handler (``retrysafe.lease_lost()``, ``ClaimTakenOver`` from
``retrysafe.atomic``) and to telemetry (span event, metric, audit field). Every test drives a
real server (uvicorn or wsgiref) over loopback, on every store kind where the store matters,
with faults triggered by count (the Nth completion fails), not by time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kit.scopes import shared_id
from kit.servers import serve_asgi, serve_wsgi
from kit.stores import FakeClock, StoreKit
from kit.telemetry import audit_to
from retrysafe import atomic, lease_lost
from retrysafe._engine import SettleRetry
from retrysafe._lease import Lease
from retrysafe._policy import Policy
from retrysafe._records import State
from retrysafe._scopes import shared_scope
from retrysafe.errors import StoreUnavailable
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.telemetry import Telemetry

WAIT = 30.0  # bounds a hang only
BODY = b'{"charged": 500}'


class FaultyStore:
    """A real store whose completions and renewals fail (or are fenced) on cue.

    ``fail_completes`` completions fail from the next one on (``-1``: all of them);
    ``renew_down`` makes every renewal fail. Calls are counted, and ``wait_for`` blocks until
    a count is reached, so a test waits on events, not on time.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_completes = 0
        self.renew_down = False
        self.counts: dict[str, int] = {}
        self._cond = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, op: str) -> None:
        with self._cond:
            self.counts[op] = self.counts.get(op, 0) + 1
            self._cond.notify_all()

    def count(self, op: str) -> int:
        with self._cond:
            return self.counts.get(op, 0)

    def wait_for(self, op: str, at_least: int) -> None:
        with self._cond:
            reached = self._cond.wait_for(lambda: self.counts.get(op, 0) >= at_least, WAIT)
        assert reached, f"store saw {self.count(op)} {op}, expected {at_least}"

    def _complete_fails(self) -> bool:
        with self._cond:
            if self.fail_completes == 0:
                return False
            if self.fail_completes > 0:
                self.fail_completes -= 1
            return True

    def complete(self, *args: Any) -> bool:
        try:
            if self._complete_fails():
                raise StoreUnavailable("test: the store dropped the completion")
            return bool(self.inner.complete(*args))
        finally:
            self._count("complete")

    async def acomplete(self, *args: Any) -> bool:
        try:
            if self._complete_fails():
                raise StoreUnavailable("test: the store dropped the completion")
            return bool(await self.inner.acomplete(*args))
        finally:
            self._count("complete")

    def renew(self, *args: Any) -> bool:
        try:
            if self.renew_down:
                raise StoreUnavailable("test: the store cannot be reached to renew")
            ok = bool(self.inner.renew(*args))
            self._count("renew" if ok else "renew_fenced")
            return ok
        finally:
            self._count("renew_tried")

    async def arenew(self, *args: Any) -> bool:
        try:
            if self.renew_down:
                raise StoreUnavailable("test: the store cannot be reached to renew")
            ok = bool(await self.inner.arenew(*args))
            self._count("renew" if ok else "renew_fenced")
            return ok
        finally:
            self._count("renew_tried")


# -- the application: one handler for both doors ---------------------------------------------


class Charges:
    """Counts charges; a run may wait on ``gate`` and may stream its answer."""

    def __init__(self, *, stream: bool = False, gate: threading.Event | None = None) -> None:
        self.stream = stream
        self.gate = gate
        self.runs = 0
        self.saw_lost: list[bool] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def charge(self) -> None:
        with self._lock:
            self.runs += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        self.saw_lost.append(lease_lost())

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await asyncio.to_thread(self.charge) if self.gate else self.charge()
        # lease_lost() is read in the request's context: to_thread copies it.
        headers = [(b"content-type", b"application/json")]
        if not self.stream:
            headers.append((b"content-length", str(len(BODY)).encode()))
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        if self.stream:
            await send({"type": "http.response.body", "body": BODY[:5], "more_body": True})
            await send({"type": "http.response.body", "body": BODY[5:]})
        else:
            await send({"type": "http.response.body", "body": BODY})

    def wsgi(self, environ: Any, start_response: Any) -> Any:
        self.charge()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
        start_response("201 Created", headers)
        if self.stream:
            return iter([BODY[:5], BODY[5:]])  # an iterator: its last chunk is unknown
        return [BODY]


def serve(door: str, app: Charges, store: Any, policy: Policy, **options: Any) -> Any:
    if door == "asgi":
        mw = ASGIIdempotencyMiddleware(app.asgi, store=store, policy=policy, **options)
        return serve_asgi(mw)
    return serve_wsgi(WSGIIdempotencyMiddleware(app.wsgi, store=store, policy=policy, **options))


def post(url: str, key: str, path: str = "/charges") -> httpx.Response:
    return httpx.post(url + path, content=b"{}", headers={"Idempotency-Key": key}, timeout=WAIT)


def record_state(store: Any, key: str) -> State | None:
    record = store.get(shared_id(store, key))
    return None if record is None else record.state


DOORS = ["asgi", "wsgi"]
# A duplicate of an in-flight request is answered 409 at once. Not about who owns a key: no
# credentials are sent, one explicit shared scope.
NO_WAIT = Policy(scope=shared_scope, wait=0)


# -- a blip while the result is saved ----------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_a_failed_completion_is_retried_and_the_retry_replays(door: str, kit: StoreKit) -> None:
    store = FaultyStore(kit.store)
    store.fail_completes = 1  # the first completion fails, the second goes through
    app = Charges()
    with serve(door, app, store, NO_WAIT) as url:
        first = post(url, "k-blip")
        again = post(url, "k-blip")
    assert first.status_code == 201
    assert store.count("complete") == 2
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == BODY
    assert app.runs == 1
    assert record_state(kit.store, "k-blip") is State.COMPLETED


@pytest.mark.parametrize("door", DOORS)
def test_a_result_that_cannot_be_stored_is_answered_503(door: str, kit: StoreKit) -> None:
    store = FaultyStore(kit.store)
    store.fail_completes = -1
    app = Charges()
    with serve(door, app, store, NO_WAIT.replace(settle_retry=0.2)) as url:
        answer = post(url, "k-down")
    assert store.count("complete") >= 2  # retried before giving up
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("store-unavailable")
    assert "processed" in answer.json()["detail"]
    # Retry-After covers the lease: until it lapses a retry would only get 409.
    assert int(answer.headers["retry-after"]) > Policy(scope=shared_scope).unavailable_retry_after_s
    assert app.runs == 1
    assert record_state(kit.store, "k-down") is State.IN_FLIGHT


@pytest.mark.parametrize("door", DOORS)
def test_a_streamed_answer_whose_result_cannot_be_stored_is_cut(door: str) -> None:
    store = FaultyStore(MemoryStore())
    store.fail_completes = -1
    app = Charges(stream=True)
    # The answer started, so it cannot become a 503: its end is withheld and the connection
    # aborted, which the client sees as a broken response (and retries).
    policy = NO_WAIT.replace(settle_retry=0.2)
    with serve(door, app, store, policy) as url, pytest.raises(httpx.RemoteProtocolError):
        post(url, "k-stream")
    assert store.count("complete") >= 2
    assert app.runs == 1


def test_completion_retries_stay_inside_the_lease() -> None:
    """The retry schedule, on a fake clock: backoff doubles, and no attempt starts at or past
    the end of the lease (nor past ``settle_retry``)."""
    policy = Policy(scope=shared_scope, lease=10, settle_retry=5)
    lease = Lease("id", claimed_at=100.0, lease_s=10)  # lapses at 110
    retry = SettleRetry(policy, lease, failed_at=108.0)
    assert retry.give_up_at == 110.0  # the lease ends before settle_retry would
    now, delays = 108.0, []
    while (delay := retry.next_delay(now, lease)) is not None:
        delays.append(delay)
        now += delay
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert now < 110.0
    bounded = SettleRetry(policy, Lease("id", 0.0, 1000), failed_at=0.0)
    assert bounded.give_up_at == 5.0
    lease.lose("taken_over")
    assert SettleRetry(policy, lease, 108.0).next_delay(108.0, lease) is None


# -- a lost lease is told ----------------------------------------------------------------------


class Telemetered:
    """Real OTel SDK providers with in-memory exporters, and the audit lines."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.lines: list[str] = []

    def telemetry(self) -> Telemetry:
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (event.name, dict(event.attributes or {}))
            for span in self.exporter.get_finished_spans()
            for event in span.events
        ]

    def counted(self, name: str) -> list[dict[str, Any]]:
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found += [dict(p.attributes) for p in metric.data.data_points]
        return found

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def telemetered() -> Iterator[Telemetered]:
    made = Telemetered()
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: made.lines.append(record.getMessage())  # type: ignore[method-assign]
    with audit_to(handler):
        yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


@pytest.mark.parametrize("door", DOORS)
def test_a_takeover_is_told_to_the_holder(door: str, telemetered: Telemetered) -> None:
    """The first holder stalls past its lease; a retry takes the key over and completes; the
    first holder's next renewal is fenced out: it learns it lost the key."""
    clock = FakeClock()
    store = FaultyStore(MemoryStore(clock=clock))
    gate = threading.Event()
    app = Charges(gate=gate)
    policy = Policy(scope=shared_scope, lease=60, heartbeat=0.02, wait=0)
    with serve(door, app, store, policy, telemetry=telemetered.telemetry()) as url:
        first: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: first.append(post(url, "k-lost")))
        holder.start()
        assert app.started.wait(WAIT)
        # The holder's renewals stop reaching the store (one already under way ends first),
        # then its lease lapses on the store's clock and a retry takes the key over.
        store.renew_down = True
        store.wait_for("renew_tried", store.count("renew_tried") + 1)
        clock.advance(61)
        app.gate = None  # the duplicate runs straight through
        takeover = post(url, "k-lost")
        assert takeover.status_code == 201
        store.renew_down = False
        store.wait_for("renew_fenced", 1)  # the stalled holder's next renewal is refused
        gate.set()
        holder.join(WAIT)
    assert app.runs == 2
    assert app.saw_lost == [False, True]  # the retry ran first, the stalled holder learnt
    assert first[0].status_code == 201  # its answer is still what it did
    assert_reported_once(telemetered, "taken_over")


def assert_reported_once(made: Telemetered, reason: str) -> None:
    assert ("retrysafe.lease_lost", {"reason": reason}) in made.events()
    points = made.counted("retrysafe.lease.lost")
    assert [p["retrysafe.lease.lost_reason"] for p in points] == [reason]
    assert [line.get("lease_lost") for line in made.audit()].count(reason) == 1


@pytest.mark.parametrize("door", DOORS)
def test_a_store_unreachable_past_the_lease_is_told(door: str, telemetered: Telemetered) -> None:
    """Renewals fail until the lease has run out: from then on a duplicate may take over, so
    the holder is told it lost the key."""
    store = FaultyStore(MemoryStore())
    store.renew_down = True
    gate = threading.Event()
    app = Charges(gate=gate)
    policy = Policy(scope=shared_scope, lease=0.3, heartbeat=0.02, wait=0)
    with serve(door, app, store, policy, telemetry=telemetered.telemetry()) as url:
        answers: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: answers.append(post(url, "k-expired")))
        holder.start()
        assert app.started.wait(WAIT)
        wait_until(lambda: telemetered.counted("retrysafe.lease.lost") != [])
        gate.set()
        holder.join(WAIT)
    assert app.saw_lost == [True]
    assert answers[0].status_code == 201
    assert_reported_once(telemetered, "expired")


def wait_until(condition: Callable[[], bool]) -> None:
    """A counted poll, bounded only against a hang."""
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("door", DOORS)
def test_atomic_work_stops_once_the_lease_is_lost(
    door: str, tmp_path: Path, telemetered: Telemetered
) -> None:
    """An atomic handler that goes on after its lease ran out is refused at its next
    ``atomic.transaction()``: its writes never commit, and the client gets 409 to retry."""
    inner = SQLiteStore(tmp_path / "atomic.db")
    with inner._using() as conn:
        conn.execute("CREATE TABLE charges (cents INTEGER)")
    store = FaultyStore(inner)
    store.renew_down = True
    gate = threading.Event()

    def write() -> None:
        assert gate.wait(WAIT)
        atomic.transaction().execute("INSERT INTO charges VALUES (500)")

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.to_thread(write)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        write()
        start_response("201 Created", [])
        return [b"charged"]

    policy = Policy(scope=shared_scope, lease=0.3, heartbeat=0.02, wait=0)
    options: dict[str, Any] = {"policy": policy, "atomic": True}
    options["telemetry"] = telemetered.telemetry()
    if door == "asgi":
        server = serve_asgi(ASGIIdempotencyMiddleware(asgi_app, store=store, **options))
    else:
        server = serve_wsgi(WSGIIdempotencyMiddleware(wsgi_app, store=store, **options))
    with server as url:
        answers: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: answers.append(post(url, "k-atomic")))
        holder.start()
        # Renewals keep failing until the lease has run out: the claim is lost.
        wait_until(lambda: telemetered.counted("retrysafe.lease.lost") != [])
        gate.set()
        holder.join(WAIT)
    assert answers[0].status_code == 409
    assert answers[0].json()["type"].endswith("request-in-flight")
    with inner._using() as conn:
        assert conn.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0
    inner.close()

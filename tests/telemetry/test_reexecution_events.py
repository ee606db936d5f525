"""Span events for executions that are not first ones: an expired key run again, a takeover.

Back-ends list and alert on span events; an attribute value among nine is easy to miss. The
events carry what the store knew of the replaced record: when the key was first used and when
it expired; the silent holder's fencing token and how long it had been silent.
"""

from __future__ import annotations

from typing import Any

from kit.asgi_call import call
from kit.stores import FakeClock
from kit.telemetry import Otel
from retrysafe import Policy
from retrysafe._outcomes import Outcome
from retrysafe._records import Previous
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry._observe import EVENT_KEY_EXPIRED, EVENT_LEASE_TAKEOVER

AUTH = [("authorization", "Bearer events")]


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def events(span: Any, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_an_expired_key_run_again_is_a_span_event_with_its_times(otel: Otel) -> None:
    clock = FakeClock(start=1_000_000.0)
    store = MemoryStore(clock=clock)
    policy = Policy(scope=shared_scope, ttl=10)
    mw = ASGIIdempotencyMiddleware(app, store=store, policy=policy, telemetry=otel.telemetry())
    assert (await call(mw, headers=AUTH)).status == 201
    clock.advance(25)  # 15 s past the TTL, inside the tombstone's retention
    assert (await call(mw, headers=AUTH)).status == 201
    first, again = otel.ours()
    assert events(first, EVENT_KEY_EXPIRED) == []  # a true first request has no such event
    (event,) = events(again, EVENT_KEY_EXPIRED)
    assert event["retrysafe.key.first_used_at"] == 1_000_000.0
    assert event["retrysafe.key.expired_at"] == 1_000_010.0
    assert event["retrysafe.key.expired_for_s"] == 15.0
    assert again.attributes["idempotency.outcome"] == "expired"


def test_a_takeover_is_a_span_event_naming_the_silent_holder(otel: Otel) -> None:
    obs = otel.telemetry().observe("function", "refund")
    silent = Previous(token=41, created_at=100.0, ended_at=160.0, now=172.5, silent_for=72.5)
    obs.decided(Outcome.RECOVERED, silent)
    obs.finish(Outcome.RECOVERED)
    (span,) = otel.ours()
    (event,) = events(span, EVENT_LEASE_TAKEOVER)
    assert event == {
        "retrysafe.lease.previous_token": 41,
        "retrysafe.lease.previous_claimed_at": 100.0,
        "retrysafe.lease.lapsed_at": 160.0,
        "retrysafe.lease.silent_for_s": 72.5,
    }
    assert events(span, EVENT_KEY_EXPIRED) == []


def test_a_first_execution_has_no_event(otel: Otel) -> None:
    obs = otel.telemetry().observe("function", "refund")
    obs.decided(Outcome.EXECUTED)
    obs.finish(Outcome.EXECUTED)
    (span,) = otel.ours()
    assert [e.name for e in span.events] == []

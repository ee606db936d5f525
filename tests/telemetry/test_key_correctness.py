"""Key correctness: an SLI of its own that pages on key misuse, per operation and per client.

Misuse (a 422 mismatch, a 409 in-flight conflict) is the client's fault: it gets its own
objective, budget and burn-rate alerts, shows per client identity in the report, and is a
metric (``retrysafe.key.uses``) a Prometheus user can alert on. Spans carry the key and the
outcome under the plain ``idempotency.*`` names.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from rich.console import Console

from kit.asgi_call import call
from kit.telemetry import Otel
from retrysafe._outcomes import Outcome
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.report._slo import (
    HOUR,
    Event,
    Objective,
    evaluate,
    misuse_by_client,
    parse_objective,
)
from retrysafe.report._summary import Log, html_page, render, summarize
from retrysafe.stores.memory import MemoryStore

NOW = 1_900_000_000.0
OP = "POST /pay"


def synthetic_hour(requests: int, misuse_every: int | None) -> list[Event]:
    """``requests`` keyed decisions spread over the last hour; every ``misuse_every``-th one is a
    mismatch or (alternately) an in-flight conflict. Half come from each of two clients."""
    events = []
    for i in range(requests):
        outcome = "replayed" if i % 3 else "executed"
        if misuse_every and i % misuse_every == 0:
            outcome = "mismatch" if (i // misuse_every) % 2 else "conflict_in_flight"
        ts = NOW - HOUR + (i + 1) * HOUR / requests
        events.append(Event(ts, OP, outcome, 200, 0.01, client=f"client-{i % 2}"))
    return events


def test_five_percent_misuse_pages_and_a_hundredth_of_a_percent_stays_quiet() -> None:
    objective = Objective(latency_s=None)
    (noisy,) = evaluate(synthetic_hour(20_000, 20), [objective], NOW)  # 5 %
    assert noisy.correctness is not None
    assert noisy.correctness.ratio == pytest.approx(0.95)
    assert {(sli, a.window.severity) for sli, a in noisy.alerts} >= {("key correctness", "page")}
    (quiet,) = evaluate(synthetic_hour(20_000, 10_000), [objective], NOW)  # 0.01 %
    assert quiet.correctness is not None
    assert quiet.correctness.bad == 2
    assert not [a for sli, a in quiet.alerts if sli == "key correctness"]


def test_mismatches_do_not_burn_the_availability_budget() -> None:
    events = [Event(NOW - i, OP, "mismatch" if i % 2 else "executed", 201) for i in range(100)]
    (status,) = evaluate(events, [Objective(latency_s=None)], NOW)
    assert status.availability.bad == 0
    assert status.correctness is not None
    assert status.correctness.bad == 50


def test_rejected_requests_are_not_key_uses() -> None:
    events = [Event(NOW - i, OP, "rejected", 400) for i in range(10)]
    events.append(Event(NOW - 20, OP, "executed", 201))
    (status,) = evaluate(events, [Objective(latency_s=None)], NOW)
    assert status.correctness is not None
    assert (status.correctness.good, status.correctness.bad) == (1, 0)


def test_correctness_can_be_turned_off() -> None:
    (status,) = evaluate(synthetic_hour(100, 2), [Objective(correctness=None)], NOW)
    assert status.correctness is None
    assert all(sli != "key correctness" for sli, _ in status.alerts)


def test_misuse_is_broken_down_per_client_worst_first() -> None:
    events = [Event(NOW - i, OP, "executed", 201, client="good-agent") for i in range(50)]
    events += [
        Event(NOW - i, OP, "mismatch" if i < 5 else "replayed", 422, client="sloppy-agent")
        for i in range(10)
    ]
    events += [
        Event(NOW - i, OP, "conflict_in_flight" if i < 1 else "executed", 409, client="hasty")
        for i in range(10)
    ]
    found = misuse_by_client(events, NOW, HOUR)
    assert [(m.client, m.misuse, m.keyed) for m in found] == [
        ("sloppy-agent", 5, 10),
        ("hasty", 1, 10),
    ]


def test_parse_objective_takes_a_correctness_target_and_refuses_unitless_latency() -> None:
    objective = parse_objective("POST /pay*=99.9,300ms@95,keys:99.5,7d")
    assert objective.correctness == pytest.approx(0.995)
    assert objective.latency_s == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"needs a unit: '300ms' or '300s'"):
        parse_objective("*=99.9,300@95")


def test_the_report_shows_the_sli_and_the_misusing_clients() -> None:
    records: list[dict[str, Any]] = [
        {
            "ts": e.ts,
            "operation": e.operation,
            "outcome": e.outcome,
            "status": e.status,
            "scope": "a" * 64 if e.client == "client-0" else "b" * 64,
            "key": f"k{i}",
        }
        for i, e in enumerate(synthetic_hour(2_000, 25))
    ]
    records.append(
        {
            "ts": NOW,
            "operation": "refund",
            "outcome": "mismatch",
            "run_id": "run-7f3a",
            "surface": "tool",
            "key": "t1",
        }
    )
    summary = summarize(Log(records, 0), [Objective(latency_s=None)], NOW)
    assert {m.client for m in summary.misuse} == {"a" * 64, "b" * 64, "run-7f3a"}
    out = io.StringIO()
    render(summary, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "key correctness" in text
    assert "Key misuse by client" in text
    assert "run-7f3a" in text
    assert "aaaaaaaaaaaa…" in text  # hashes are cut, never shown whole
    page = html_page(summary)
    ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))  # still well-formed XML
    assert "Key misuse by client" in page
    assert "key correctness" in page


async def test_key_uses_metric_and_plain_attribute_names(otel: Otel) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guarded = ASGIIdempotencyMiddleware(app, store=MemoryStore(), telemetry=otel.telemetry())
    auth = [("authorization", "Bearer a")]
    assert (await call(guarded, key="k-1", headers=auth)).status == 201
    assert (await call(guarded, key="k-1", headers=auth)).status == 201  # replay
    assert (await call(guarded, key="k-1", headers=auth, body=b"{}")).status == 422
    assert (await call(guarded, key="bad key \x01", headers=auth)).status == 400  # rejected
    points = otel.points()["retrysafe.key.uses"]
    by_misuse = {p.attributes["retrysafe.key.misuse"]: p.value for p in points}
    assert by_misuse == {"none": 2, "mismatch": 1}  # the rejected request used no key
    assert all(p.attributes["retrysafe.operation"] == "POST /pay" for p in points)
    spans = otel.ours()
    outcomes = sorted(str(s.attributes["idempotency.outcome"]) for s in spans)
    assert outcomes == sorted([Outcome.EXECUTED.value, "replayed", "mismatch", "rejected"])
    keyed = [s for s in spans if s.attributes["idempotency.outcome"] != "rejected"]
    assert {s.attributes["idempotency.key"] for s in keyed} == {"k-1"}
    assert not any(k.startswith("retrysafe.idempotency.key") for s in spans for k in s.attributes)

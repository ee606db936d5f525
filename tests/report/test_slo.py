"""SLO math (SPEC 35) against hand-computed fixtures, plus invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe.report._slo import (
    DAY,
    HOUR,
    MINUTE,
    Event,
    Kind,
    Objective,
    budget_series,
    classify,
    evaluate,
    parse_objective,
)

NOW = 10_000_000.0
OP = "POST /pay"


def events(n: int, age: float, outcome: str = "executed", status: int = 201, **kw: float) -> list:
    return [Event(NOW - age, OP, outcome, status, kw.get("duration")) for _ in range(n)]


@pytest.mark.parametrize(
    ("outcome", "status", "kind"),
    [
        ("executed", 201, Kind.GOOD),
        ("executed", 404, Kind.GOOD),
        ("executed", 500, Kind.BAD),
        ("replayed", 503, Kind.BAD),  # a stored 5xx (store_server_errors=True) still hurts
        ("replayed", 200, Kind.GOOD),
        ("expired", 200, Kind.GOOD),
        ("recovered", 200, Kind.GOOD),
        ("unreplayable", 409, Kind.GOOD),
        ("store_error", 503, Kind.BAD),
        ("store_error", 200, Kind.BAD),  # failed open: served, but unprotected
        ("conflict_in_flight", 409, Kind.BAD),
        ("mismatch", 422, Kind.CLIENT_ERROR),
        ("rejected", 400, Kind.CLIENT_ERROR),
    ],
)
def test_classify(outcome: str, status: int, kind: Kind) -> None:
    assert classify(outcome, status) is kind


def test_every_window_on_a_hand_computed_log() -> None:
    log = [
        *events(900, 10 * DAY),
        *events(90, 2 * HOUR),
        *events(10, 2 * HOUR, "executed", 500),
        *events(5, MINUTE),
        *events(5, MINUTE, "store_error", 503),
        *events(7, MINUTE, "mismatch", 422),  # client errors: not in the SLI
        *events(3, 31 * DAY, "store_error", 503),  # outside the 30-day window
        *events(4, -10, "store_error", 503),  # after "now": not yet
    ]
    (status,) = evaluate(log, [Objective(OP, success=0.99, latency_s=None)], NOW)
    a = status.availability
    assert (a.good, a.bad, status.client_errors) == (995, 15, 7)
    assert a.burn[5 * MINUTE] == pytest.approx(50.0)  # 5/10 bad over 1 % allowed
    assert a.burn[30 * MINUTE] == pytest.approx(50.0)
    assert a.burn[HOUR] == pytest.approx(50.0)
    assert a.burn[6 * HOUR] == pytest.approx((15 / 110) / 0.01)  # 13.636...
    assert a.burn[3 * DAY] == pytest.approx((15 / 110) / 0.01)
    assert a.budget_remaining == pytest.approx(1 - (15 / 1010) / 0.01)  # -0.485...
    assert not a.met
    fired = [(al.window.severity, al.window.long_s) for al in a.alerts]
    assert fired == [("page", HOUR), ("page", 6 * HOUR), ("ticket", 3 * DAY)]
    assert status.latency is None
    assert status.by_outcome == {"executed": 1005, "store_error": 5, "mismatch": 7}


def test_only_the_slow_burn_tickets() -> None:
    log = [
        *events(1000, DAY),
        *events(20, DAY, "conflict_in_flight", 409),
        *events(98, 3 * HOUR),
        *events(2, 3 * HOUR, "store_error", 503),
    ]
    (status,) = evaluate(log, [Objective("POST *", success=0.99, latency_s=None)], NOW)
    a = status.availability
    assert a.burn[3 * DAY] == pytest.approx((22 / 1120) / 0.01)  # 1.964...
    assert a.burn[6 * HOUR] == pytest.approx(2.0)
    assert a.burn[HOUR] == 0.0
    assert [al.window.severity for al in a.alerts] == ["ticket"]


def test_burn_equal_to_the_factor_does_not_fire() -> None:
    log = [*events(99, 3 * HOUR), *events(1, 3 * HOUR, "store_error", 503)]
    (status,) = evaluate(log, [Objective(OP, success=0.99, latency_s=None)], NOW)
    assert status.availability.burn[6 * HOUR] == pytest.approx(1.0)
    assert status.availability.alerts == ()


def test_latency_indicator() -> None:
    log = [
        *events(8, HOUR / 2, duration=0.1),
        *events(2, HOUR / 2, duration=0.9),
        *events(3, HOUR / 2, "rejected", 400, duration=5.0),  # client errors do not count
    ]
    objective = Objective(OP, success=0.999, latency_s=0.5, latency_target=0.9)
    (status,) = evaluate(log, [objective], NOW)
    lat = status.latency
    assert lat is not None
    assert (lat.good, lat.bad) == (8, 2)
    assert lat.ratio == pytest.approx(0.8)
    assert lat.burn[HOUR] == pytest.approx(0.2 / 0.1)
    assert lat.budget_remaining == pytest.approx(1 - 2.0)
    assert status.availability.budget_remaining == 1.0


def test_first_matching_objective_and_unmatched_operations() -> None:
    log = [Event(NOW, "POST /pay", "executed", 200), Event(NOW, "GET /x", "executed", 200)]
    objectives = [Objective("POST /pay", success=0.9), Objective("POST *", success=0.5)]
    (status,) = evaluate(log, objectives, NOW)
    assert status.operation == "POST /pay"
    assert status.objective.success == 0.9


def test_budget_series_looks_back_one_window_at_each_point() -> None:
    objective = Objective(OP, success=0.9, latency_s=None, window_s=HOUR)
    log = [
        Event(NOW - 2 * HOUR, OP, "executed", 500),
        Event(NOW - 2 * HOUR, OP, "executed", 200),
    ]
    series = budget_series(log, objective, NOW - 2 * HOUR, NOW, 3)
    assert [t for t, _ in series] == [NOW - 2 * HOUR, NOW - HOUR, NOW]
    assert [b for _, b in series] == pytest.approx([1 - 0.5 / 0.1, 1.0, 1.0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST /pay*=99.9", Objective("POST /pay*", success=0.999, latency_s=None)),
        (
            "*=99,300ms@95,7d",
            Objective("*", success=0.99, latency_s=0.3, latency_target=0.95, window_s=7 * DAY),
        ),
        ("POST /a=b=90,2s@50%", Objective("POST /a=b", 0.9, 2.0, 0.5)),
    ],
)
def test_parse_objective(text: str, expected: Objective) -> None:
    assert parse_objective(text) == expected


@pytest.mark.parametrize("text", ["99.9", "=99", "*=", "*=100", "*=abc", "*=99,5x", "*=99,1s@0"])
def test_parse_objective_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"objective|fraction|between"):
        parse_objective(text)


OUTCOMES = ["executed", "replayed", "expired", "recovered", "unreplayable"]
OUTCOMES += ["store_error", "conflict_in_flight", "mismatch", "rejected"]
event_st = st.builds(
    lambda age, outcome, status, d: Event(NOW - age, OP, outcome, status, d),
    st.floats(0, 40 * DAY),
    st.sampled_from(OUTCOMES),
    st.sampled_from([200, 201, 404, 409, 422, 500, 503]),
    st.none() | st.floats(0, 10),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(event_st, max_size=60), st.floats(0.5, 0.9999))
def test_invariants(log: list[Event], target: float) -> None:
    statuses = evaluate(log, [Objective(success=target, latency_s=0.5)], NOW)
    for status in statuses:
        for ind in (status.availability, status.latency):
            assert ind is not None
            assert ind.budget_remaining <= 1.0
            assert all(b >= 0 and math.isfinite(b) for b in ind.burn.values())
            if ind.bad == 0:
                assert ind.budget_remaining == 1.0
                assert ind.alerts == ()
            # A window no longer than the SLO window saw a subset of its bad events.
            spent = ind.bad / max(ind.valid, 1) / (1 - ind.target)
            assert ind.budget_remaining == pytest.approx(1 - spent)
    no_bad = [e for e in log if e.kind is not Kind.BAD and (e.status or 0) < 500]
    for status in evaluate(no_bad, [Objective(success=target, latency_s=None)], NOW):
        assert all(b == 0 for b in status.availability.burn.values())
        assert status.availability.budget_remaining == 1.0

"""Retry budget (SPEC 23) and circuit breaker (SPEC 24), alone and through the transports."""

from __future__ import annotations

import threading

import httpx
import pytest

from kit.client_harness import FakeTime, Harness, Script, reply
from retrysafe.client import (
    BudgetExhausted,
    CircuitBreaker,
    CircuitOpen,
    Permit,
    Refusal,
    RetriesExhausted,
    RetryBudget,
    RetryPolicy,
    State,
    Transition,
)

# -- budget -----------------------------------------------------------------------------------


def test_budget_allows_ratio_of_requests_plus_floor() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.2, floor=0.0, burst=100.0, clock=t.monotonic)
    for _ in range(int(budget.available("h"))):  # start from empty
        budget.withdraw("h")
    for _ in range(50):
        budget.deposit("h")
    granted = sum(budget.withdraw("h") for _ in range(30))
    assert granted == 10  # 50 requests x 20 %
    assert budget.refused == 20
    floored = RetryBudget(ratio=0.0, floor=10.0, burst=10.0, clock=t.monotonic)
    assert sum(floored.withdraw("h") for _ in range(20)) == 10
    t.advance(0.5)
    assert sum(floored.withdraw("h") for _ in range(20)) == 5  # 10 per second refill
    assert floored.withdraw("other-host")  # hosts have separate buckets


def test_budget_is_exact_under_threads() -> None:
    budget = RetryBudget(ratio=0.0, floor=0.0, burst=50.0)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [budget.withdraw("h") for _ in range(200)]
        with lock:
            granted.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(granted) == 50
    assert budget.refused == 8 * 200 - 50


def test_a_retry_storm_is_bounded_by_the_budget(flavor: str) -> None:
    t = FakeTime()
    net = Script(reply(503))
    budget = RetryBudget(ratio=0.2, floor=1.0, burst=5.0, clock=t.monotonic)
    h = Harness(flavor, net, time=t, budget=budget, retry=RetryPolicy(base=0.01, cap=0.01))
    start = t.monotonic()
    calls, refused, keys = 200, [], set()
    for _ in range(calls):
        try:
            h.post()
        except BudgetExhausted as exc:
            refused.append(exc)
            keys.add(exc.key)
        except RetriesExhausted:
            pass
    elapsed = t.monotonic() - start
    retries = len(net.seen) - calls
    # Without a budget every call would make 2 retries (400 in all).
    assert retries <= 5 + 0.2 * calls + 1.0 * elapsed + 1
    assert retries < 0.3 * 2 * calls
    assert len(refused) > calls / 2
    assert None not in keys
    assert len(keys) == len(refused)  # each refusal names its own call's key
    assert all(exc.host == "api.test" for exc in refused)


def test_budget_can_be_switched_off(flavor: str) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, budget=None, retry=RetryPolicy(base=0.0))
    for _ in range(20):
        with pytest.raises(RetriesExhausted):
            h.post()
    assert len(net.seen) == 60


# -- breaker ----------------------------------------------------------------------------------


def make_breaker(t: FakeTime, **kw: object) -> tuple[CircuitBreaker, list[Transition]]:
    seen: list[Transition] = []
    options: dict[str, object] = {
        "minimum_calls": 4,
        "failure_rate": 0.5,
        "window": 30.0,
        "open_for": 10.0,
        "probes": 2,
        "clock": t.monotonic,
        "listeners": [seen.append],
    }
    options.update(kw)
    return CircuitBreaker(**options), seen  # type: ignore[arg-type]


def call(breaker: CircuitBreaker, failed: bool, duration: float = 0.01) -> None:
    permit = breaker.admit("h")
    assert isinstance(permit, Permit)
    breaker.record(permit, failed=failed, duration=duration)


def test_breaker_opens_half_opens_and_closes() -> None:
    t = FakeTime()
    breaker, seen = make_breaker(t)
    call(breaker, False)
    call(breaker, True)
    call(breaker, False)
    assert breaker.state("h") is State.CLOSED  # 3 calls: below minimum_calls
    call(breaker, True)  # 2 of 4 failed = 50 %
    assert breaker.state("h") is State.OPEN
    refusal = breaker.admit("h")
    assert isinstance(refusal, Refusal)
    assert refusal.closes_at == pytest.approx(t.monotonic() + 10.0)
    t.advance(9.9)
    assert isinstance(breaker.admit("h"), Refusal)
    t.advance(0.2)
    p1, p2, p3 = breaker.admit("h"), breaker.admit("h"), breaker.admit("h")
    assert isinstance(p1, Permit)
    assert isinstance(p2, Permit)
    assert p1.probe
    assert p2.probe
    assert isinstance(p3, Refusal)  # only `probes` calls while half-open
    breaker.record(p1, failed=False, duration=0.01)
    assert breaker.state("h") is State.HALF_OPEN
    breaker.record(p2, failed=False, duration=0.01)
    assert breaker.state("h") is State.CLOSED
    assert [(e.old, e.new) for e in seen] == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]
    assert seen[0].failure_rate == 0.5
    assert seen[0].calls == 4


def test_open_period_grows_on_repeated_opens_and_resets_on_close() -> None:
    t = FakeTime()
    breaker, seen = make_breaker(t, growth=2.0, max_open_for=25.0)
    for _ in range(4):
        call(breaker, True)
    periods = []
    for _ in range(3):
        opened = [e for e in seen if e.new is State.OPEN][-1]
        assert opened.open_until is not None
        periods.append(opened.open_until - opened.at)
        t.advance(periods[-1])
        call(breaker, True)  # the probe fails: open again, for longer
    assert periods == [10.0, 20.0, 25.0]  # capped by max_open_for
    t.advance(25.0)
    call(breaker, False)
    call(breaker, False)
    assert breaker.state("h") is State.CLOSED
    for _ in range(4):
        call(breaker, True)
    last = seen[-1]
    assert last.open_until is not None
    assert last.open_until - last.at == 10.0  # a close resets the growth


def test_old_failures_leave_the_window() -> None:
    t = FakeTime()
    breaker, _ = make_breaker(t)
    for _ in range(3):
        call(breaker, True)
    t.advance(31.0)
    call(breaker, True)
    call(breaker, False)
    call(breaker, False)
    assert breaker.state("h") is State.CLOSED  # 1 of 3 in the window; minimum not reached
    call(breaker, False)
    call(breaker, False)
    assert breaker.state("h") is State.CLOSED


def test_slow_calls_count_as_failures_when_a_threshold_is_set() -> None:
    t = FakeTime()
    breaker, _ = make_breaker(t, slow_call=1.0)
    for _ in range(4):
        call(breaker, False, duration=2.0)
    assert breaker.state("h") is State.OPEN
    fast, _ = make_breaker(t)
    for _ in range(4):
        call(fast, False, duration=2.0)
    assert fast.state("h") is State.CLOSED


def test_metrics_only_mode_reports_but_never_refuses() -> None:
    t = FakeTime()
    breaker, seen = make_breaker(t, metrics_only=True)
    for _ in range(4):
        call(breaker, True)
    assert breaker.state("h") is State.OPEN
    for _ in range(10):
        permit = breaker.admit("h")
        assert isinstance(permit, Permit)
        assert permit.shadow
        breaker.record(permit, failed=False, duration=0.0)
    assert [e.new for e in seen] == [State.OPEN]


def test_a_released_probe_frees_its_slot() -> None:
    t = FakeTime()
    breaker, _ = make_breaker(t, probes=1)
    for _ in range(4):
        call(breaker, True)
    t.advance(10.0)
    probe = breaker.admit("h")
    assert isinstance(probe, Permit)
    assert isinstance(breaker.admit("h"), Refusal)
    breaker.release(probe)
    assert isinstance(breaker.admit("h"), Permit)


def test_a_failing_listener_does_not_break_calls() -> None:
    t = FakeTime()

    def broken(_: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker, seen = make_breaker(t)
    breaker.add_listener(broken)
    for _ in range(4):
        call(breaker, True)
    assert breaker.state("h") is State.OPEN
    assert len(seen) == 1


def test_open_circuit_fails_fast_without_sending(flavor: str) -> None:
    t = FakeTime()
    breaker, seen = make_breaker(t)
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, breaker=breaker, retry=RetryPolicy(attempts=1))
    for _ in range(4):
        with pytest.raises(RetriesExhausted):
            h.post()
    assert breaker.state("api.test") is State.OPEN
    sent = len(net.seen)
    with pytest.raises(CircuitOpen) as caught:
        h.post(headers={"Idempotency-Key": "k-open"})
    assert len(net.seen) == sent  # nothing sent: the key is not consumed
    err = caught.value
    assert err.key == "k-open"
    assert err.circuit == "api.test"
    assert err.closes_at == pytest.approx(t.monotonic() + 10.0)
    assert err.not_before == pytest.approx(t.wall() + 10.0)
    assert isinstance(err, httpx.TransportError)
    # After the open period the probes go out and, succeeding, close the circuit.
    t.advance(10.0)
    net.answers = [reply(200)]
    assert h.post().status_code == 200
    assert h.post().status_code == 200
    assert breaker.state("api.test") is State.CLOSED
    assert [e.new for e in seen] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_client_errors_never_count_against_the_circuit(flavor: str) -> None:
    t = FakeTime()
    breaker, seen = make_breaker(t)
    net = Script(reply(404), reply(429), reply(400), reply(422))
    h = Harness(flavor, net, time=t, breaker=breaker, retry=RetryPolicy(attempts=1))
    statuses = []
    for _ in range(40):
        try:
            statuses.append(h.post().status_code)
        except RetriesExhausted as exc:  # 429 is retryable; with one attempt it gives up
            statuses.append(exc.last_response.status_code if exc.last_response else 0)
    assert sorted(set(statuses)) == [400, 404, 422, 429]
    assert breaker.state("api.test") is State.CLOSED
    assert seen == []


def test_a_retry_into_an_opened_circuit_stops(flavor: str) -> None:
    t = FakeTime()
    breaker, _ = make_breaker(t, minimum_calls=2, failure_rate=1.0)
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, breaker=breaker, retry=RetryPolicy(attempts=5))
    with pytest.raises(CircuitOpen) as caught:
        h.post()
    assert len(net.seen) == 2  # the third attempt met the open circuit
    assert caught.value.last_response is not None
    assert caught.value.last_response.status_code == 503
    assert len(caught.value.attempts) == 2


def test_named_and_keyed_circuits() -> None:
    named = CircuitBreaker(name="payments")
    keyed = CircuitBreaker(key=lambda r: r.url.path.split("/")[1])
    request = httpx.Request("POST", "http://a.test:8080/v1/charges")
    assert named.circuit_for(request) == "payments"
    assert keyed.circuit_for(request) == "v1"
    assert CircuitBreaker().circuit_for(request) == "a.test:8080"

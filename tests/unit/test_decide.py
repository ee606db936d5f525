"""The sans-I/O core: admit, decide, settle, replay_headers (SPEC rules 2-3, 7-12, 15)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe._decide import (
    Complete,
    Execute,
    Keyed,
    Pass,
    Refuse,
    Release,
    Replay,
    Wait,
    admit,
    decide,
    replay_headers,
    settle,
)
from retrysafe._outcomes import Outcome
from retrysafe._policy import NEVER_REPLAYED, Policy, Problem
from retrysafe._records import Claimed, Existing, Record, State, StoredResponse

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
DEFAULT = Policy()

# -- admit ------------------------------------------------------------------------------------


def lines(*values: str) -> list[list[str]]:
    """``header_values`` for the default policy: one header name with these lines."""
    return [list(values)]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_methods_not_covered_pass_through_even_with_a_bad_key(method: str) -> None:
    required = Policy(required=True)
    assert admit(method, "/x", lines(KEY), required) == Pass()
    assert admit(method, "/x", lines("bad key"), required) == Pass()
    assert admit(method, "/x", lines(), required) == Pass()


@pytest.mark.parametrize("method", ["POST", "PATCH", "post", "Patch"])
def test_covered_method_with_a_key_is_keyed(method: str) -> None:
    assert admit(method, "/x", lines(KEY), DEFAULT) == Keyed(KEY)
    assert admit(method, "/x", lines(f'"{KEY}"'), DEFAULT) == Keyed(KEY)


def test_covered_methods_are_configurable() -> None:
    policy = Policy(methods=frozenset({"put", "POST"}))
    assert admit("PUT", "/x", lines(KEY), policy) == Keyed(KEY)
    assert admit("PATCH", "/x", lines(KEY), policy) == Pass()


def test_missing_key_passes_unless_required() -> None:
    assert admit("POST", "/x", lines(), DEFAULT) == Pass()
    assert admit("POST", "/x", [], DEFAULT) == Pass()


def test_missing_key_on_a_required_endpoint_is_refused() -> None:
    refusal = admit("post", "/charges", lines(), Policy(required=True))
    assert isinstance(refusal, Refuse)
    assert refusal.problem is Problem.MISSING_KEY
    assert refusal.outcome is Outcome.REJECTED
    assert refusal.retry_after is None
    assert "POST /charges" in refusal.detail
    assert "Idempotency-Key" in refusal.detail


def test_required_can_be_a_callable_of_method_and_path() -> None:
    calls: list[tuple[str, str]] = []

    def only_charges(method: str, path: str) -> bool:
        calls.append((method, path))
        return path.startswith("/charges")

    policy = Policy(required=only_charges)
    assert isinstance(admit("POST", "/charges/1", lines(), policy), Refuse)
    assert admit("POST", "/other", lines(), policy) == Pass()
    assert calls == [("POST", "/charges/1"), ("POST", "/other")]
    # Not consulted when a key is present or the method is not covered.
    assert admit("POST", "/charges", lines(KEY), policy) == Keyed(KEY)
    assert admit("GET", "/charges", lines(), policy) == Pass()
    assert len(calls) == 2


@pytest.mark.parametrize(
    "values",
    [[""], ["a b"], ["a, b"], ['"a", "b"'], ["a", "b"], ['"abc'], ["x" * 256], ["caf\u00e9"]],
)
def test_malformed_key_is_refused_not_ignored(values: list[str]) -> None:
    for policy in (DEFAULT, Policy(required=True)):
        refusal = admit("POST", "/x", [values], policy)
        assert isinstance(refusal, Refuse)
        assert refusal.problem is Problem.MALFORMED_KEY
        assert refusal.outcome is Outcome.REJECTED
        assert refusal.detail


def test_key_rules_of_the_policy_apply() -> None:
    policy = Policy(key_min_length=10, uuid_only=False)
    refusal = admit("POST", "/x", lines("short"), policy)
    assert isinstance(refusal, Refuse)
    assert "at least 10" in refusal.detail
    uuids = Policy(uuid_only=True)
    assert admit("POST", "/x", lines(KEY), uuids) == Keyed(KEY)
    assert isinstance(admit("POST", "/x", lines("abc"), uuids), Refuse)


def test_second_header_name_is_accepted_but_not_both() -> None:
    policy = Policy(header_names=("Idempotency-Key", "X-Idempotency-Key"))
    assert admit("POST", "/x", [[], [KEY]], policy) == Keyed(KEY)
    assert admit("POST", "/x", [[KEY], []], policy) == Keyed(KEY)
    both = admit("POST", "/x", [[KEY], [KEY]], policy)
    assert isinstance(both, Refuse)
    assert both.problem is Problem.MALFORMED_KEY
    assert "X-Idempotency-Key" in both.detail


def test_body_key_is_used_only_without_a_header() -> None:
    policy = Policy(body_field="idempotency_key")
    assert admit("POST", "/x", lines(), policy, body_key="from-body") == Keyed("from-body")
    assert admit("POST", "/x", lines(KEY), policy, body_key="from-body") == Keyed(KEY)
    bad = admit("POST", "/x", lines(), policy, body_key="bad key")
    assert isinstance(bad, Refuse)
    assert bad.problem is Problem.MALFORMED_KEY
    # A malformed header is refused even if the body has a good key.
    assert isinstance(admit("POST", "/x", lines("a,b"), policy, body_key="good"), Refuse)


# -- decide -----------------------------------------------------------------------------------

FP = "f" * 64
OTHER = "0" * 64
OK = StoredResponse(201, (("content-type", "application/json"),), b'{"id": 1}')


def record(state: State, fp: str = FP) -> Record:
    response = {
        State.IN_FLIGHT: None,
        State.COMPLETED: OK,
        State.UNREPLAYABLE: StoredResponse(200, (), b"", False),
    }[state]
    return Record("id", fp, state, 42, 100.0, 200.0, 300.0, response)


@pytest.mark.parametrize(
    ("claimed", "outcome"),
    [
        (Claimed(7), Outcome.EXECUTED),
        (Claimed(7, expired_before=True, previous_fingerprint=OTHER), Outcome.EXPIRED),
        (Claimed(7, recovered=True, previous_fingerprint=FP), Outcome.RECOVERED),
        (Claimed(7, expired_before=True, recovered=True), Outcome.RECOVERED),
    ],
)
@pytest.mark.parametrize("waited", [0.0, 3.0, 100.0])
def test_claimed_executes_with_its_outcome(
    claimed: Claimed, outcome: Outcome, waited: float
) -> None:
    # The fingerprint does not matter once the key is held: the claim already checked it.
    for fp in (FP, OTHER):
        assert decide(claimed, fp, waited, DEFAULT) == Execute(7, outcome)


LIVE = [State.IN_FLIGHT, State.COMPLETED, State.UNREPLAYABLE]
WAITED = [0.0, 2.5, 4.999, 5.0, 5.001, 60.0]


@pytest.mark.parametrize(
    ("state", "same_fp", "waited"), list(itertools.product(LIVE, [True, False], WAITED))
)
def test_existing_record_exhaustively(state: State, same_fp: bool, waited: float) -> None:
    existing = record(state)
    decision = decide(Existing(existing), FP if same_fp else OTHER, waited, DEFAULT)
    if not same_fp:
        # SPEC 9: mismatch wins over every state, in flight included, and whatever the wait.
        assert isinstance(decision, Refuse)
        assert decision.problem is Problem.MISMATCH
        assert decision.outcome is Outcome.MISMATCH
        assert decision.retry_after is None
        assert "different request" in decision.detail
    elif state is State.COMPLETED:
        assert decision == Replay(OK, existing, Outcome.REPLAYED)
    elif state is State.UNREPLAYABLE:
        assert isinstance(decision, Refuse)
        assert decision.problem is Problem.UNREPLAYABLE
        assert decision.outcome is Outcome.UNREPLAYABLE
        assert "cannot be replayed" in decision.detail
    elif waited < 5.0:
        assert decision == Wait(pytest.approx(5.0 - waited))
    else:
        assert isinstance(decision, Refuse)
        assert decision.problem is Problem.IN_FLIGHT
        assert decision.outcome is Outcome.CONFLICT_IN_FLIGHT
        assert decision.retry_after == 1.0
        assert "Retry-After" in decision.detail


def test_zero_wait_refuses_in_flight_at_once() -> None:
    decision = decide(Existing(record(State.IN_FLIGHT)), FP, 0.0, Policy(wait=0))
    assert isinstance(decision, Refuse)
    assert decision.problem is Problem.IN_FLIGHT


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(0, 1), (0.2, 1), (1, 1), (1.01, 2), (2.5, 3), (30, 30)]
)
def test_in_flight_retry_after_is_whole_seconds_at_least_one(
    retry_after: float, expected: int
) -> None:
    policy = Policy(wait=timedelta(0), in_flight_retry_after=retry_after)
    decision = decide(Existing(record(State.IN_FLIGHT)), FP, 0.0, policy)
    assert isinstance(decision, Refuse)
    assert decision.retry_after == expected


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(LIVE),
    same_fp=st.booleans(),
    waited=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    wait=st.floats(min_value=0, max_value=1e4, allow_nan=False),
)
def test_decide_on_existing_is_total_and_never_executes(
    state: State, same_fp: bool, waited: float, wait: float
) -> None:
    policy = Policy(wait=wait)
    decision = decide(Existing(record(state)), FP if same_fp else OTHER, waited, policy)
    assert not isinstance(decision, Execute)  # a live record never runs the handler again
    match decision:
        case Wait(timeout):
            assert state is State.IN_FLIGHT
            assert same_fp
            assert 0 < timeout <= wait
            assert waited + timeout == pytest.approx(wait)
        case Refuse(problem, _, outcome, retry_after):
            assert outcome is not Outcome.REPLAYED
            if problem is Problem.IN_FLIGHT:
                assert waited >= wait
                assert retry_after is not None
                assert retry_after >= 1
            else:
                assert retry_after is None
        case Replay(response, rec, outcome):
            assert (state, same_fp, outcome) == (State.COMPLETED, True, Outcome.REPLAYED)
            assert response is rec.response


@settings(max_examples=100, deadline=None)
@given(
    token=st.integers(min_value=1, max_value=2**62),
    expired=st.booleans(),
    recovered=st.booleans(),
    waited=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_decide_on_claimed_always_executes_with_the_token(
    token: int, expired: bool, recovered: bool, waited: float
) -> None:
    decision = decide(Claimed(token, expired, recovered), FP, waited, DEFAULT)
    assert isinstance(decision, Execute)
    assert decision.token == token
    assert decision.outcome.billable
    assert decision.outcome is (
        Outcome.RECOVERED if recovered else Outcome.EXPIRED if expired else Outcome.EXECUTED
    )


def test_waiting_twice_adds_up_to_the_bound() -> None:
    # The engine's loop: claim, Wait(t), watch up to t, claim again with the time waited.
    existing = Existing(record(State.IN_FLIGHT))
    first = decide(existing, FP, 0.0, DEFAULT)
    assert first == Wait(5.0)
    second = decide(existing, FP, 3.0, DEFAULT)
    assert second == Wait(2.0)
    third = decide(existing, FP, 5.0, DEFAULT)
    assert isinstance(third, Refuse)


# -- settle -----------------------------------------------------------------------------------

HEADERS = [
    ("Content-Type", "application/json"),
    ("Location", "/charges/1"),
    ("ETag", '"v1"'),
    ("Set-Cookie", "session=secret"),
    ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ("X-Request-Id", "r-1"),
    ("RateLimit-Remaining", "9"),
    ("Content-Length", "9"),
    ("X-Custom", "1"),
]


@pytest.mark.parametrize("status", [200, 201, 204, 302, 400, 404, 409, 422, 499])
def test_below_500_is_stored(status: int) -> None:
    settled = settle(status, HEADERS, b"body", DEFAULT)
    assert isinstance(settled, Complete)
    assert settled.response.status == status
    assert settled.response.body == b"body"
    assert settled.response.replayable


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_released_unless_store_server_errors(status: int) -> None:
    assert settle(status, HEADERS, b"oops", DEFAULT) == Release()
    stored = settle(status, HEADERS, b"oops", Policy(store_server_errors=True))
    assert isinstance(stored, Complete)
    assert stored.response.status == status


def test_no_status_is_released() -> None:
    assert settle(None, [], None, DEFAULT) == Release()
    assert settle(None, HEADERS, b"", Policy(store_server_errors=True)) == Release()


def test_no_body_is_stored_unreplayable_without_headers() -> None:
    settled = settle(200, HEADERS, None, DEFAULT, trace=("t" * 32, "s" * 16))
    assert settled == Complete(StoredResponse(200, (), b"", False, "t" * 32, "s" * 16))
    assert settle(503, HEADERS, None, DEFAULT) == Release()


def test_only_allow_listed_headers_are_kept_lower_cased_in_order() -> None:
    settled = settle(201, HEADERS, b"{}", DEFAULT)
    assert isinstance(settled, Complete)
    assert settled.response.headers == (
        ("content-type", "application/json"),
        ("location", "/charges/1"),
        ("etag", '"v1"'),
    )


def test_configured_replay_headers_are_kept_but_never_forbidden_ones() -> None:
    policy = Policy(replay_headers=frozenset({"X-Custom", "content-type"}))
    settled = settle(201, HEADERS, b"{}", policy)
    assert isinstance(settled, Complete)
    assert settled.response.headers == (("content-type", "application/json"), ("x-custom", "1"))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                sorted(NEVER_REPLAYED | {"content-type", "Location", "ETAG", "link", "x-other"})
            ),
            st.text(max_size=10),
        ),
        max_size=12,
    ),
    st.integers(min_value=100, max_value=599),
)
def test_settle_never_keeps_a_forbidden_header(headers: list[tuple[str, str]], status: int) -> None:
    policy = Policy(
        store_server_errors=True,
        release_statuses=frozenset(),  # every status is stored: the headers are the subject
        replay_headers=frozenset({"x-other", "link"}),
    )
    settled = settle(status, headers, b"", policy)
    assert isinstance(settled, Complete)
    kept = [name for name, _ in settled.response.headers]
    assert all(name == name.lower() and name in policy.replay_headers for name in kept)
    assert not set(kept) & NEVER_REPLAYED
    assert len(kept) == sum(1 for name, _ in headers if name.lower() in policy.replay_headers)


def test_trace_ids_are_kept_for_span_links() -> None:
    settled = settle(200, [], b"ok", DEFAULT, trace=("a" * 32, "b" * 16))
    assert isinstance(settled, Complete)
    assert (settled.response.trace_id, settled.response.span_id) == ("a" * 32, "b" * 16)
    plain = settle(200, [], b"ok", DEFAULT)
    assert isinstance(plain, Complete)
    assert (plain.response.trace_id, plain.response.span_id) == (None, None)


# -- replay_headers ---------------------------------------------------------------------------


def test_replay_headers_add_length_and_marker() -> None:
    assert replay_headers(OK) == [
        ("content-type", "application/json"),
        ("content-length", "9"),
        ("idempotent-replayed", "true"),
    ]


def test_replay_headers_of_an_empty_body() -> None:
    assert replay_headers(StoredResponse(204)) == [
        ("content-length", "0"),
        ("idempotent-replayed", "true"),
    ]


def test_settled_then_replayed_round_trip() -> None:
    settled = settle(201, HEADERS, b"\x00\xffbytes", DEFAULT)
    assert isinstance(settled, Complete)
    replayed = dict(replay_headers(settled.response))
    assert replayed["content-length"] == "7"
    assert replayed["idempotent-replayed"] == "true"
    assert "set-cookie" not in replayed
    assert "date" not in replayed
    assert settled.response.body == b"\x00\xffbytes"


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["POST", "PATCH", "GET", "put", "post"]),
    first=st.lists(st.text(max_size=20), max_size=3),
    second=st.lists(st.text(max_size=20), max_size=3),
    required=st.booleans(),
)
def test_admit_is_total_over_any_header_lines(
    method: str, first: list[str], second: list[str], required: bool
) -> None:
    policy = Policy(header_names=("Idempotency-Key", "X-Idempotency-Key"), required=required)
    admission = admit(method, "/x", [first, second], policy)
    match admission:
        case Pass():
            assert not policy.covers(method) or (not first and not second and not required)
        case Keyed(key):
            assert policy.covers(method)
            assert bool(first) != bool(second)
            assert len(first or second) == 1
            assert 1 <= len(key) <= 255
        case Refuse(problem, detail, outcome, retry_after):
            assert policy.covers(method)
            assert problem in (Problem.MALFORMED_KEY, Problem.MISSING_KEY)
            assert (problem is Problem.MISSING_KEY) is (not first and not second)
            assert outcome is Outcome.REJECTED
            assert retry_after is None
            assert detail

"""The record state table and the pure store steps (SPEC rules 7, 12-15, _records.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe._records import (
    TRANSITIONS,
    Claimed,
    Event,
    Existing,
    Record,
    State,
    StoredResponse,
    claim_on,
    complete_on,
    held_by,
    lease_left,
    next_token,
    release_allowed,
    renew_on,
    resolve,
    transition,
    visible,
)
from retrysafe.errors import IllegalTransition, RetrySafeError

T0 = 1_700_000_000.0
LEASE = 60.0
TTL = 3600.0
RETENTION = 600.0
OK = StoredResponse(201, (("content-type", "application/json"),), b'{"id": 1}')

# The life cycle drawn in _records.py's docstring, written out independently.
EXPECTED = {
    (State.ABSENT, Event.CLAIM): State.IN_FLIGHT,
    (State.TOMBSTONE, Event.CLAIM): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.TAKEOVER): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.RENEW): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.COMPLETE): State.COMPLETED,
    (State.IN_FLIGHT, Event.COMPLETE_UNREPLAYABLE): State.UNREPLAYABLE,
    (State.IN_FLIGHT, Event.RELEASE): State.ABSENT,
    (State.COMPLETED, Event.TTL_LAPSED): State.TOMBSTONE,
    (State.UNREPLAYABLE, Event.TTL_LAPSED): State.TOMBSTONE,
    (State.TOMBSTONE, Event.RETENTION_LAPSED): State.ABSENT,
}


# -- the table --------------------------------------------------------------------------------


def test_table_is_the_documented_life_cycle() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_transition_follows_the_table_or_raises_naming_both(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert transition(state, event) is EXPECTED[state, event]
        return
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert str(info.value) == f"no transition from {state.value} on {event.value}"
    assert isinstance(info.value, RetrySafeError)


def test_every_state_is_reachable_from_absent_and_can_return_to_it() -> None:
    reach = {State.ABSENT}
    while True:
        more = {after for (before, _), after in TRANSITIONS.items() if before in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(State)
    for state in State:  # no dead ends: every state has a way out
        assert any(before is state for before, _ in TRANSITIONS)


def test_only_an_in_flight_record_can_be_renewed_completed_or_released() -> None:
    for event in (Event.RENEW, Event.COMPLETE, Event.COMPLETE_UNREPLAYABLE, Event.RELEASE):
        assert {s for s, e in TRANSITIONS if e is event} == {State.IN_FLIGHT}


# -- resolve: lapsed TTLs applied at store time -----------------------------------------------


def in_flight(token: int = 1, fp: str = "fp", lease_until: float = T0 + LEASE) -> Record:
    return Record("id", fp, State.IN_FLIGHT, token, lease_until, created_at=T0)


def completed(state: State = State.COMPLETED, token: int = 1, fp: str = "fp") -> Record:
    return Record(
        "id", fp, state, token, T0 + LEASE, T0 + TTL, T0 + TTL + RETENTION, OK, created_at=T0
    )


def test_resolve_absent() -> None:
    assert resolve(None, T0) is State.ABSENT


def test_resolve_in_flight_ignores_the_lease() -> None:
    # A lapsed lease does not change the state: it only lets a duplicate take over.
    assert resolve(in_flight(), T0) is State.IN_FLIGHT
    assert resolve(in_flight(), T0 + 10 * TTL) is State.IN_FLIGHT


@pytest.mark.parametrize("state", [State.COMPLETED, State.UNREPLAYABLE])
def test_resolve_applies_ttl_then_retention(state: State) -> None:
    record = completed(state)
    assert resolve(record, T0) is state
    assert resolve(record, T0 + TTL - 0.001) is state
    assert resolve(record, T0 + TTL) is State.TOMBSTONE  # the TTL bound is exclusive
    assert resolve(record, T0 + TTL + RETENTION - 0.001) is State.TOMBSTONE
    assert resolve(record, T0 + TTL + RETENTION) is State.ABSENT


def test_resolve_with_zero_retention_skips_the_tombstone() -> None:
    record = complete_on(in_flight(), 1, OK, TTL, 0.0, T0)
    assert record is not None
    assert resolve(record, T0 + TTL) is State.ABSENT


def test_resolve_stored_tombstone() -> None:
    tomb = Record("id", "fp", State.TOMBSTONE, 1, retain_until=T0 + 5)
    assert resolve(tomb, T0) is State.TOMBSTONE
    assert resolve(tomb, T0 + 5) is State.ABSENT


# -- next_token -------------------------------------------------------------------------------


def test_first_token_is_the_clock_in_microseconds() -> None:
    assert next_token(None, 12.5) == 12_500_000


@given(
    st.integers(min_value=0, max_value=2**62),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_next_token_exceeds_the_previous_and_follows_the_clock(previous: int, now: float) -> None:
    token = next_token(previous, now)
    assert token > previous
    assert token >= int(now * 1_000_000)
    assert token < 2**63  # fits a signed 64-bit column (SQLite INTEGER, Postgres bigint)


def test_next_token_survives_a_clock_that_steps_back() -> None:
    assert next_token(next_token(None, 100.0), 50.0) == 100_000_001


# -- claim_on ---------------------------------------------------------------------------------


def test_claim_on_absent_holds_the_key() -> None:
    result, record = claim_on(None, "id", "fp", LEASE, T0)
    assert result == Claimed(next_token(None, T0))
    assert record == Record("id", "fp", State.IN_FLIGHT, result.token, T0 + LEASE, created_at=T0)


def test_claim_on_live_in_flight_returns_it_untouched() -> None:
    held = in_flight(token=7)
    for now in (T0, T0 + LEASE - 0.001):
        result, record = claim_on(held, "id", "fp", LEASE, now)
        assert result == Existing(held, now)  # with the store time it answered at
        assert record is held


def test_claim_on_lapsed_lease_takes_over_with_a_larger_token() -> None:
    held = in_flight(token=next_token(None, T0))
    result, record = claim_on(held, "id", "fp", LEASE, T0 + LEASE)  # lease bound is exclusive
    assert isinstance(result, Claimed)
    assert result.recovered
    assert not result.expired_before
    assert result.previous_fingerprint == "fp"
    assert result.token > held.token
    assert record.state is State.IN_FLIGHT
    assert record.token == result.token
    assert record.lease_until == T0 + 2 * LEASE
    # The dead holder is fenced out of every write.
    assert renew_on(record, held.token, LEASE, T0 + LEASE) is None
    assert complete_on(record, held.token, OK, TTL, RETENTION, T0 + LEASE) is None
    assert not release_allowed(record, held.token, T0 + LEASE)


def test_claim_on_lapsed_lease_with_another_fingerprint_does_not_take_over() -> None:
    # SPEC 9: same key, different request is a 422 even while in flight, and "the stored record
    # is untouched". A lapsed lease must not let a different request run under the dead
    # holder's key: only a retry of the same request recovers it.
    held = in_flight(token=5, fp="fp-original")
    result, record = claim_on(held, "id", "fp-other", LEASE, T0 + 2 * LEASE)
    assert result == Existing(held, T0 + 2 * LEASE)
    assert record is held
    retry, _ = claim_on(held, "id", "fp-original", LEASE, T0 + 2 * LEASE)
    assert isinstance(retry, Claimed)
    assert retry.recovered


@pytest.mark.parametrize("state", [State.COMPLETED, State.UNREPLAYABLE])
def test_claim_on_live_result_returns_it_whatever_the_fingerprint(state: State) -> None:
    done = completed(state)
    for fp in ("fp", "other"):
        result, record = claim_on(done, "id", fp, LEASE, T0 + TTL - 1)
        assert result == Existing(done, T0 + TTL - 1)
        assert record is done


def test_claim_on_tombstone_is_an_expired_re_execution() -> None:
    done = completed(token=next_token(None, T0))
    result, record = claim_on(done, "id", "fp-new", LEASE, T0 + TTL)
    assert isinstance(result, Claimed)
    assert result.expired_before
    assert not result.recovered
    assert result.previous_fingerprint == "fp"
    assert result.token > done.token
    assert record == Record(
        "id", "fp-new", State.IN_FLIGHT, result.token, T0 + TTL + LEASE, created_at=T0 + TTL
    )


def test_claim_on_past_retention_is_a_plain_first_request() -> None:
    done = completed(token=next_token(None, T0))
    result, _ = claim_on(done, "id", "fp", LEASE, T0 + TTL + RETENTION)
    assert isinstance(result, Claimed)
    assert not result.expired_before
    assert not result.recovered
    assert result.previous_fingerprint is None
    assert result.token > done.token  # tokens still grow over a record that lingers


# -- renew_on / complete_on / release_allowed -------------------------------------------------


def test_renew_extends_but_never_shortens_the_lease() -> None:
    held = in_flight(token=3)
    renewed = renew_on(held, 3, LEASE, T0 + 10)
    assert renewed is not None
    assert renewed.lease_until == T0 + 10 + LEASE
    assert renewed.state is State.IN_FLIGHT
    assert (renewed.token, renewed.fingerprint, renewed.created_at) == (3, "fp", T0)
    shorter = renew_on(renewed, 3, 1.0, T0 + 11)
    assert shorter is not None
    assert shorter.lease_until == T0 + 10 + LEASE


def test_holder_may_renew_and_complete_after_its_lease_lapsed_if_not_taken_over() -> None:
    held = in_flight(token=3)
    late = T0 + 5 * LEASE
    assert renew_on(held, 3, LEASE, late) is not None
    assert complete_on(held, 3, OK, TTL, RETENTION, late) is not None
    assert release_allowed(held, 3, late)


@pytest.mark.parametrize(
    "record",
    [None, in_flight(token=4), completed(token=3), completed(State.UNREPLAYABLE, token=3)],
    ids=["absent", "other-holder", "completed", "unreplayable"],
)
def test_writes_without_the_holding_token_are_fenced_out(record: Record | None) -> None:
    assert renew_on(record, 3, LEASE, T0) is None
    assert complete_on(record, 3, OK, TTL, RETENTION, T0) is None
    assert not release_allowed(record, 3, T0)


def test_complete_stores_the_response_with_ttl_and_retention() -> None:
    done = complete_on(in_flight(token=3), 3, OK, TTL, RETENTION, T0 + 2)
    assert done == Record(
        "id",
        "fp",
        State.COMPLETED,
        3,
        T0 + LEASE,
        expires_at=T0 + 2 + TTL,
        retain_until=T0 + 2 + TTL + RETENTION,
        response=OK,
        created_at=T0,
    )
    assert complete_on(done, 3, OK, TTL, RETENTION, T0 + 3) is None  # no second completion


def test_complete_unreplayable_keeps_status_and_trace_but_drops_headers_and_body() -> None:
    streamed = StoredResponse(200, (("content-type", "text/plain"),), b"partial", False, "t", "s")
    done = complete_on(in_flight(token=3), 3, streamed, TTL, RETENTION, T0)
    assert done is not None
    assert done.state is State.UNREPLAYABLE
    assert done.response == StoredResponse(200, (), b"", False, "t", "s")


# -- a random walk over the pure store steps --------------------------------------------------

FINGERPRINTS = ("fp-a", "fp-b")
step = st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(FINGERPRINTS)),
    st.tuples(st.just("renew"), st.integers(0, 12)),
    st.tuples(st.just("complete"), st.integers(0, 12), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 12)),
    st.tuples(
        st.just("advance"),
        st.sampled_from([0.5, LEASE / 2, LEASE, TTL, RETENTION, TTL + RETENTION]),
    ),
)


def changed_by(before: State, event: Event, after: State) -> None:
    """Fail unless ``before -event-> after`` is in the table (a legal transition)."""
    assert TRANSITIONS.get((before, event)) is after, f"{before} -{event}-> {after}"


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_random_event_sequences_stay_inside_the_table(steps: list[tuple[object, ...]]) -> None:
    """Drive claim/renew/complete/release with a moving clock against a tiny model.

    Checks after every step: the state change is one row of TRANSITIONS; every new claim or
    takeover gets a token larger than every token minted before; only the current holder's
    token can renew, complete or release (a stale token never can).
    """
    now = T0
    record: Record | None = None
    minted: list[int] = []  # every token handed out, oldest first

    def holder() -> int | None:
        if record is not None and resolve(record, now) is State.IN_FLIGHT:
            return record.token
        return None

    for action, *args in steps:
        # The store clock moves between any two operations (2 µs, so the microsecond stamps
        # differ despite float rounding); the same-instant case is the xfail test below.
        now += 2e-6
        before = resolve(record, now)
        if action == "advance":
            (dt,) = args
            assert isinstance(dt, float)
            now += dt
            continue
        if action == "claim":
            (fp,) = args
            assert isinstance(fp, str)
            result, new = claim_on(record, "id", fp, LEASE, now)
            if isinstance(result, Claimed):
                assert not minted or result.token > max(minted)
                minted.append(result.token)
                assert (new.state, new.token, new.fingerprint) == (
                    State.IN_FLIGHT,
                    result.token,
                    fp,
                )
                if result.recovered:
                    assert record is not None
                    assert before is State.IN_FLIGHT
                    assert now >= record.lease_until
                    assert record.fingerprint == fp  # only the same request takes over
                    changed_by(before, Event.TAKEOVER, State.IN_FLIGHT)
                else:
                    assert before in (State.ABSENT, State.TOMBSTONE)
                    assert result.expired_before is (before is State.TOMBSTONE)
                    changed_by(before, Event.CLAIM, State.IN_FLIGHT)
            else:
                assert new is record
                assert record is not None
                assert result.record is record
                assert before in (State.IN_FLIGHT, State.COMPLETED, State.UNREPLAYABLE)
                if before is State.IN_FLIGHT:
                    assert now < record.lease_until or record.fingerprint != fp
            record = new
            continue
        # A write with a token drawn from everything minted (or one never minted).
        index = args[0]
        assert isinstance(index, int)
        token = minted[index] if index < len(minted) else -1
        holds = token == holder()
        if action == "renew":
            renewed = renew_on(record, token, LEASE, now)
            assert (renewed is not None) is holds
            if renewed is not None:
                assert record is not None
                assert renewed.lease_until >= max(record.lease_until, now + LEASE)
                changed_by(before, Event.RENEW, resolve(renewed, now))
                record = renewed
        elif action == "complete":
            replayable = args[1]
            assert isinstance(replayable, bool)
            response = StoredResponse(200, (), b"x", replayable)
            done = complete_on(record, token, response, TTL, RETENTION, now)
            assert (done is not None) is holds
            if done is not None:
                event = Event.COMPLETE if replayable else Event.COMPLETE_UNREPLAYABLE
                changed_by(before, event, resolve(done, now))
                record = done
        elif action == "release":
            allowed = release_allowed(record, token, now)
            assert allowed is holds
            if allowed:
                changed_by(before, Event.RELEASE, State.ABSENT)
                record = None


def test_token_of_a_released_claim_is_not_reused_at_the_same_instant() -> None:
    # The first holder releases (5xx) and a retry claims within the same clock tick: the two
    # claims must not share a fencing token, or the first holder's late heartbeat or write
    # would act on the retry's record. Release deletes the record, so the store passes its
    # high-water mark of issued tokens as the floor.
    first, record = claim_on(None, "id", "fp", LEASE, T0)
    assert isinstance(first, Claimed)
    assert release_allowed(record, first.token, T0)
    second, _ = claim_on(None, "id", "fp", LEASE, T0, floor=first.token)
    assert isinstance(second, Claimed)
    assert second.token != first.token


def test_visible_is_what_a_reader_sees_as_time_passes() -> None:
    done = complete_on(in_flight(token=3), 3, OK, TTL, RETENTION, T0)
    assert done is not None
    assert visible(None, T0) is None
    assert visible(done, T0 + 1) is done  # live: the record itself, response and all
    tomb = visible(done, T0 + TTL)
    assert tomb is not None
    assert tomb.state is State.TOMBSTONE
    assert tomb.response is None  # SPEC 14: no body after the TTL
    assert (tomb.fingerprint, tomb.token, tomb.expires_at) == ("fp", 3, done.expires_at)
    assert visible(tomb, T0 + TTL + 1) is tomb  # a stored tombstone is shown as it is
    assert visible(done, T0 + TTL + RETENTION) is None  # gone after retention


def test_lease_left_counts_down_only_for_a_live_claim() -> None:
    claim = in_flight(token=3)
    assert lease_left(None, T0) == 0.0
    assert lease_left(claim, T0 + 10) == LEASE - 10
    assert lease_left(claim, T0 + LEASE + 1) == 0.0  # lapsed: a waiter may take it over
    done = complete_on(claim, 3, OK, TTL, RETENTION, T0 + 1)
    assert lease_left(done, T0 + 2) == 0.0  # completed: nothing to wait for


def test_held_by_only_the_current_token() -> None:
    claim = in_flight(token=3)
    assert held_by(claim, 3, T0 + 1)
    assert not held_by(claim, 4, T0 + 1)
    assert not held_by(None, 3, T0 + 1)

"""The outcome vocabulary of SPEC rule 32 (outcomes.py)."""

from __future__ import annotations

from retrysafe.outcomes import Outcome


def test_outcome_values_are_the_spec_vocabulary() -> None:
    assert [o.value for o in Outcome] == [
        "executed",
        "replayed",
        "conflict_in_flight",
        "mismatch",
        "expired",
        "recovered",
        "rejected",
        "unreplayable",
        "store_error",
    ]


def test_str_is_the_value_for_span_attributes_and_logs() -> None:
    for outcome in Outcome:
        assert str(outcome) == outcome.value
        assert f"{outcome}" == outcome.value
        assert Outcome(outcome.value) is outcome


def test_only_work_that_ran_is_billable() -> None:
    # SPEC 32: billable is false on replays; only a handler run (first, after expiry, or a
    # takeover after a crash) did billable work.
    assert {o for o in Outcome if o.billable} == {
        Outcome.EXECUTED,
        Outcome.EXPIRED,
        Outcome.RECOVERED,
    }
    assert not Outcome.REPLAYED.billable

"""The outcome vocabulary of SPEC rule 32 and the completion verdicts of SPEC 35a (_outcomes.py)."""

from __future__ import annotations

import pytest

from retrysafe import Completion
from retrysafe._outcomes import Outcome


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


@pytest.mark.parametrize(
    ("runs", "succeeded", "refused", "verdict"),
    [
        (1, True, False, Completion.ONCE),  # ran, answered (or its retry got the replay)
        (0, True, False, Completion.ONCE),  # a replay of a run outside what was seen
        (2, True, False, Completion.DUPLICATED),  # ran again: after a 5xx, a TTL, a takeover
        (5, True, True, Completion.DUPLICATED),  # a later mismatch does not undo a success
        (3, False, False, Completion.FAILED),  # ran and failed every time: never completed
        (0, False, False, Completion.FAILED),  # nothing ran: the caller gave up
        (0, False, True, Completion.REJECTED),  # key misuse, a malformed key, a 4xx
        (2, False, True, Completion.REJECTED),
    ],
)
def test_completion_verdicts(
    runs: int, succeeded: bool, refused: bool, verdict: Completion
) -> None:
    assert Completion.of(runs, succeeded, refused) is verdict


def test_completion_values_are_the_spec_vocabulary() -> None:
    assert [str(c) for c in Completion] == ["once", "duplicated", "failed", "rejected"]

"""Success by completion (SPEC 35a): what one decision says about its key.

Pure computation on an outcome and a status, as spans and the audit log record them; the
verdict is :meth:`retrysafe._outcomes.Completion.of`. On its own a decision knows what it did:
``retrysafe.completion`` on its span and the ``retrysafe.completions`` counter come from here.
Per key, over all its decisions, :mod:`retrysafe.report._completion` folds these facts:

- **ran**: the decision ran the handler or tool (``executed``, ``expired``, ``recovered``, and
  a ``store_error`` answered with a success, which ran unprotected); a run that failed counts.
- **reran**: the key had run before this run (``expired``: its earlier answer passed its TTL;
  ``recovered``: its earlier holder went silent).
- **succeeded**: it answered with a success (status below 400) from a run or a replay, or was
  ``unreplayable`` (a run completed; only its answer could not be kept).
- **refused**: key misuse (``mismatch``, ``conflict_in_flight``), a ``rejected`` key, or a 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrysafe._outcomes import Completion

RUN_OUTCOMES = frozenset({"executed", "expired", "recovered"})
RERUN_OUTCOMES = frozenset({"expired", "recovered"})  # the key ran before this run
REFUSAL_OUTCOMES = frozenset({"mismatch", "conflict_in_flight", "rejected"})
_ANSWERED = RUN_OUTCOMES | {"replayed", "store_error"}


@dataclass(frozen=True, slots=True)
class Decision:
    """What one decision (an audit line) says about its key."""

    ran: bool
    reran: bool  # the key had run before this run (expired, recovered)
    succeeded: bool
    refused: bool

    @property
    def completion(self) -> Completion:
        """The verdict as far as this decision alone knows (the span attribute)."""
        return Completion.of(self.ran + self.reran, self.succeeded, self.refused)


def decision(outcome: str, status: int | None) -> Decision:
    """The facts of one decision; ``status`` is None where none was sent (tool refusals)."""
    if outcome == "unreplayable":
        return Decision(False, False, True, False)
    success = status is not None and status < 400
    ran = outcome in RUN_OUTCOMES or (outcome == "store_error" and success)
    refused = outcome in REFUSAL_OUTCOMES or (status is not None and 400 <= status < 500)
    return Decision(ran, outcome in RERUN_OUTCOMES, outcome in _ANSWERED and success, refused)


__all__ = ["REFUSAL_OUTCOMES", "RERUN_OUTCOMES", "RUN_OUTCOMES", "Decision", "decision"]

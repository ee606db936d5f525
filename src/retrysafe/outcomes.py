"""The outcome vocabulary of SPEC rule 32, shared by spans, metrics and the audit log."""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    EXECUTED = "executed"
    REPLAYED = "replayed"
    CONFLICT_IN_FLIGHT = "conflict_in_flight"
    MISMATCH = "mismatch"
    EXPIRED = "expired"
    RECOVERED = "recovered"
    REJECTED = "rejected"
    UNREPLAYABLE = "unreplayable"
    STORE_ERROR = "store_error"

    def __str__(self) -> str:
        return self.value

    @property
    def billable(self) -> bool:
        """Whether the operation did (or may have done) billable work this time."""
        return self in (Outcome.EXECUTED, Outcome.EXPIRED, Outcome.RECOVERED)

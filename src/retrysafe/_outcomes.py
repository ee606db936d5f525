"""The outcome vocabulary of SPEC rule 32, shared by spans, metrics and the audit log, and the
completion vocabulary of SPEC 35a, shared by the client and the report."""

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


class Completion(enum.Enum):
    """What became of one logical operation, one key, over all its attempts (SPEC 35a).

    The success SLI of client calls and tools: not "the last answer was a 2xx" but "the
    operation completed exactly once". A first attempt that ran and a retry answered by its
    replay are one success, ``ONCE``, not a failure and a success. :meth:`of` is the rule;
    the client applies it per call, ``retrysafe report`` per key from the audit log.
    """

    ONCE = "once"  # succeeded after exactly one run; every other attempt ran nothing
    DUPLICATED = "duplicated"  # succeeded, but the operation ran (or may have run) again
    FAILED = "failed"  # never succeeded: every attempt failed, or the caller gave up
    REJECTED = "rejected"  # never succeeded: refused (key misuse, malformed key, a 4xx)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, runs: int, succeeded: bool, refused: bool) -> Completion:
        """The verdict on an operation.

        ``runs``: how many times the operation ran, or may have run (a run that failed
        counts: whatever it did before failing happened); ``succeeded``: an attempt got a
        success (below 400), from its own run or as a replay of one; ``refused``: the last
        answer refused the operation. Zero runs with a success is ``ONCE``: a replay shows
        a run that completed, outside what was seen.
        """
        if succeeded:
            return cls.ONCE if runs <= 1 else cls.DUPLICATED
        return cls.REJECTED if refused else cls.FAILED

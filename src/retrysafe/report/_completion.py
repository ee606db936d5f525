"""Success by completion per key (SPEC 35a): each logical operation's verdict from its decisions.

Pure computation on audit lines. A logical operation is one key within its operation and client
identity; its decisions are its attempts, folded in time order from the facts of
:func:`retrysafe._completion.decision`: the verdict is
:meth:`retrysafe._outcomes.Completion.of` over its runs (when the first run seen is ``expired``
or ``recovered``, the run before it counts too: it is older than the log, or its process died
before writing a line), whether any decision succeeded, and whether the last one refused it.
A retry answered by the replay adds an attempt, not a run: the key is still one success.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from retrysafe._completion import Decision, decision
from retrysafe._outcomes import Completion


@dataclass(slots=True)
class KeyFate:
    """One logical operation: its decisions folded in time order."""

    operation: str
    client: str
    key: str
    attempts: int = 0
    runs: int = 0
    succeeded: bool = False
    refused: bool = False  # the last decision's
    last_ts: float = 0.0

    def add(self, ts: float, d: Decision) -> None:
        self.attempts += 1
        if d.ran:
            # The first run seen, of a key that ran before: that earlier run is older than
            # the log (or its process died before writing a line). Count it.
            self.runs += 1 + (self.runs == 0 and d.reran)
        self.succeeded = self.succeeded or d.succeeded
        self.refused = d.refused
        self.last_ts = max(self.last_ts, ts)

    @property
    def completion(self) -> Completion:
        return Completion.of(self.runs, self.succeeded, self.refused)


def fates(decisions: Iterable[tuple[float, str, str, str, str, int | None]]) -> list[KeyFate]:
    """Per key, from ``(ts, operation, client, key, outcome, status)`` in any order.

    Decisions without a key (a missing or malformed one) are no logical operation: left out.
    """
    found: dict[tuple[str, str, str], KeyFate] = {}
    for ts, operation, client, key, outcome, status in sorted(decisions, key=lambda d: d[0]):
        if not key:
            continue
        fate = found.get((operation, client, key))
        if fate is None:
            fate = found[(operation, client, key)] = KeyFate(operation, client, key)
        fate.add(ts, decision(outcome, status))
    return list(found.values())


@dataclass(slots=True)
class OperationCompletion:
    """The keys of one operation, counted by verdict."""

    verdicts: Counter[Completion] = field(default_factory=Counter)
    retried: int = 0  # ONCE keys with more than one attempt: each retry got the replay

    @property
    def keys(self) -> int:
        return sum(self.verdicts.values())

    @property
    def ratio(self) -> float | None:
        """Share of keys completed exactly once; None without keys."""
        return self.verdicts[Completion.ONCE] / self.keys if self.keys else None


def by_operation(found: Iterable[KeyFate]) -> dict[str, OperationCompletion]:
    """Verdict counts per operation, operations sorted by name."""
    out: dict[str, OperationCompletion] = {}
    for fate in found:
        counts = out.setdefault(fate.operation, OperationCompletion())
        verdict = fate.completion
        counts.verdicts[verdict] += 1
        counts.retried += verdict is Completion.ONCE and fate.attempts > 1
    return dict(sorted(out.items()))


__all__ = ["KeyFate", "OperationCompletion", "by_operation", "fates"]

"""Counts of records per state, for ``retrysafe keys stats`` (admin only, never a request path).

Every store that can count cheaply has ``stats() -> KeyStats``. States are those of
``records.resolve`` at the store's clock: a completed record past its TTL counts as a tombstone
(SPEC 14), a record past its retention is not counted (it is gone, or waits for a purge).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from retrysafe._records import State

# The states a stored record can be in; ABSENT is not a stored state.
COUNTED = (State.IN_FLIGHT, State.COMPLETED, State.UNREPLAYABLE, State.TOMBSTONE)


@dataclass(frozen=True)
class KeyStats:
    """Records per state. ``complete`` is False when a bound (Redis SCAN) stopped the count."""

    counts: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def tally(states: Iterable[str], *, complete: bool = True) -> KeyStats:
    """Count ``states`` (State values); every counted state appears, zero included."""
    counts = {str(s): 0 for s in COUNTED}
    for state in states:
        if state != State.ABSENT.value:
            counts[state] = counts.get(state, 0) + 1
    return KeyStats(counts, complete)


def from_rows(rows: Iterable[tuple[str, int]]) -> KeyStats:
    """KeyStats from ``(state, count)`` rows of a GROUP BY."""
    counts = {str(s): 0 for s in COUNTED}
    for state, n in rows:
        counts[state] = counts.get(state, 0) + int(n)
    return KeyStats(counts)

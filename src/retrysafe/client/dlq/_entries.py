"""What the dead-letter queue keeps: an entry, the states it moves through, a replay's outcome.

The values the queue (``_queue.py``) and its storage backends (``_backend.py``) exchange.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from retrysafe.client._retry import Attempt


class EntryState(enum.Enum):
    PARKED = "parked"  # waiting for a replay
    REPLAYING = "replaying"  # claimed by a replayer; the claim lapses at not_before
    DONE = "done"  # a replay got an answer (2xx/3xx, or a stored replay of one)
    FAILED = "failed"  # a replay got a terminal answer (422 mismatch, other 4xx)
    RECONCILE = "reconcile"  # past its replay window: a human or a job must check the far side

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked call."""

    id: str
    state: EntryState
    reason: str
    created_at: float
    updated_at: float
    not_before: float
    replay_by: float
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    redacted: tuple[str, ...]  # names of the headers removed before storing
    body: bytes
    key: str
    attempts: tuple[Attempt, ...]
    last_error: str
    replays: int = 0
    last_status: int | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A replay's outcome, written only while the replayer still holds claim ``token``."""

    id: str
    token: str
    state: EntryState
    now: float
    not_before: float
    counted: bool  # a replay was sent (a reconcile flag is not a replay)
    status: int | None
    detail: str

    def row(self) -> tuple[object, ...]:
        """The values the SQL backends' settle statement binds, in its placeholders' order:
        state, updated_at, not_before, replays added, last_status, last_error, id, claim."""
        return (
            self.state.value,
            self.now,
            self.not_before,
            int(self.counted),
            self.status,
            self.detail,
            self.id,
            self.token,
        )

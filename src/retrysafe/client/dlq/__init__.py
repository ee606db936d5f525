"""The dead-letter queue: calls that could not finish now, kept to be replayed later (SPEC 25).

:class:`DeadLetterQueue` (``_queue.py``) holds the logic: redaction, claims, replay, pacing,
reconciliation. Its storage sits behind a small protocol (``_backend.py``), one backend per
module (``_sqlite.py``, ``_redis.py``, ``_postgres.py``), chosen by the queue's URL; they share
the stored form of an entry (``_entries.py``, ``_rows.py``). A replay must carry the
credentials the call lost when it was parked (``_credentials.py``). docs/client.md has the
user's view.
"""

from __future__ import annotations

from retrysafe.client.dlq._credentials import header_label
from retrysafe.client.dlq._entries import DeadLetter, EntryState
from retrysafe.client.dlq._queue import (
    CREDENTIAL_HEADERS,
    REDACTED_HEADERS,
    REPLAY_EXTENSION,
    DeadLetterQueue,
    ReplayResult,
)

__all__ = [
    "CREDENTIAL_HEADERS",
    "REDACTED_HEADERS",
    "REPLAY_EXTENSION",
    "DeadLetter",
    "DeadLetterQueue",
    "EntryState",
    "ReplayResult",
    "header_label",
]

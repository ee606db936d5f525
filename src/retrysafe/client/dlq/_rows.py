"""Entries as stored values and back, shared by the storage backends.

The SQL backends store an entry as one row of :data:`COLUMNS`; the Redis backend as a hash of
the same fields. Lists (headers, redacted names, attempts) are stored as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from retrysafe.client._retry import Attempt
from retrysafe.client.dlq._entries import DeadLetter, EntryState


def attempts_json(attempts: Sequence[Attempt]) -> str:
    return json.dumps(
        [
            {
                "number": a.number,
                "started": a.started,
                "duration": a.duration,
                "status": a.status,
                "error": a.error,
                "wait": a.wait,
            }
            for a in attempts
        ]
    )


def attempts_of(text: str) -> tuple[Attempt, ...]:
    return tuple(Attempt(**a) for a in json.loads(text))


def headers_json(headers: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(h) for h in headers])


def headers_of(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


# The stored fields of an entry, in the order of the SQL backends' columns.
COLUMNS = (
    "id",
    "state",
    "reason",
    "created_at",
    "updated_at",
    "not_before",
    "replay_by",
    "method",
    "url",
    "headers",
    "redacted",
    "body",
    "key",
    "attempts",
    "last_error",
    "replays",
    "last_status",
)


def row_of(e: DeadLetter) -> tuple[Any, ...]:
    """An entry as stored values in :data:`COLUMNS` order (lists as JSON text)."""
    return (
        e.id,
        e.state.value,
        e.reason,
        e.created_at,
        e.updated_at,
        e.not_before,
        e.replay_by,
        e.method,
        e.url,
        headers_json(e.headers),
        json.dumps(list(e.redacted)),
        e.body,
        e.key,
        attempts_json(e.attempts),
        e.last_error,
        e.replays,
        e.last_status,
    )


def entry_of(row: Sequence[Any]) -> DeadLetter:
    """Stored values in :data:`COLUMNS` order -> an entry."""
    return DeadLetter(
        id=str(row[0]),
        state=EntryState(row[1]),
        reason=str(row[2]),
        created_at=float(row[3]),
        updated_at=float(row[4]),
        not_before=float(row[5]),
        replay_by=float(row[6]),
        method=str(row[7]),
        url=str(row[8]),
        headers=headers_of(row[9]),
        redacted=tuple(json.loads(row[10])),
        body=bytes(row[11]),
        key=str(row[12]),
        attempts=attempts_of(row[13]),
        last_error=str(row[14]),
        replays=int(row[15]),
        last_status=None if row[16] is None else int(row[16]),
    )

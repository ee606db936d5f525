"""The idempotent HTTP client: httpx transports with keys, retries, budget, breaker and DLQ.

Needs the ``[client]`` extra (httpx). See docs/client.md.
"""

from __future__ import annotations

from onceonly.client._flow import CallReport
from onceonly.client.breaker import CircuitBreaker, Permit, Refusal, State, Transition
from onceonly.client.budget import RetryBudget
from onceonly.client.dlq import DeadLetter, DeadLetterQueue, EntryState, ReplayResult
from onceonly.client.errors import (
    BudgetExhausted,
    CallFailed,
    CircuitOpen,
    KeyMismatchResponse,
    RetriesExhausted,
    RetryDeferred,
)
from onceonly.client.retry import Attempt, Failure, RetryPolicy, classify_error, retry_after
from onceonly.client.testing import set_testing
from onceonly.client.transport import AsyncIdempotentTransport, IdempotentTransport

__all__ = [
    "AsyncIdempotentTransport",
    "Attempt",
    "BudgetExhausted",
    "CallFailed",
    "CallReport",
    "CircuitBreaker",
    "CircuitOpen",
    "DeadLetter",
    "DeadLetterQueue",
    "EntryState",
    "Failure",
    "IdempotentTransport",
    "KeyMismatchResponse",
    "Permit",
    "Refusal",
    "ReplayResult",
    "RetriesExhausted",
    "RetryBudget",
    "RetryDeferred",
    "RetryPolicy",
    "State",
    "Transition",
    "classify_error",
    "retry_after",
    "set_testing",
]

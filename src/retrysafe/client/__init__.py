"""The idempotent HTTP client: httpx transports with keys, retries, budget and breaker.

The dead-letter queue the transports park calls in is :mod:`retrysafe.client.dlq`.

Needs the ``[client]`` extra (httpx). See docs/client.md.
"""

from __future__ import annotations

from retrysafe._extras import require

require("client", "retrysafe.client", "httpx")


from retrysafe.client._breaker import CircuitBreaker, Permit, Refusal, State, Transition
from retrysafe.client._budget import RetryBudget
from retrysafe.client._errors import (
    BudgetExhausted,
    CallFailed,
    CircuitOpen,
    KeyMismatchResponse,
    RetriesExhausted,
    RetryDeferred,
)
from retrysafe.client._flow import CallReport
from retrysafe.client._retry import Attempt, Failure, RetryPolicy, classify_error, retry_after
from retrysafe.client._transport import AsyncIdempotentTransport, IdempotentTransport

__all__ = [
    "AsyncIdempotentTransport",
    "Attempt",
    "BudgetExhausted",
    "CallFailed",
    "CallReport",
    "CircuitBreaker",
    "CircuitOpen",
    "Failure",
    "IdempotentTransport",
    "KeyMismatchResponse",
    "Permit",
    "Refusal",
    "RetriesExhausted",
    "RetryBudget",
    "RetryDeferred",
    "RetryPolicy",
    "State",
    "Transition",
    "classify_error",
    "retry_after",
]

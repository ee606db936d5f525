"""retrysafe: idempotency keys done right, so retries are safe.

Public names only; everything else lives in its own module.
"""

from __future__ import annotations

from retrysafe.context import current_key
from retrysafe.errors import (
    AtomicUnsupported,
    ClaimTakenOver,
    ConfigurationError,
    ForeignConnection,
    IdempotencyConflict,
    InvalidKey,
    KeyMismatch,
    NoAtomicContext,
    RetrySafeError,
    StillInFlight,
    StoreError,
    StoreFull,
    StoreUnavailable,
    Unreplayable,
)
from retrysafe.keys import derive_key, new_key
from retrysafe.lease import lease_lost
from retrysafe.outcomes import Completion, Outcome
from retrysafe.policy import Policy, Problem
from retrysafe.scopes import (
    authorization_scope,
    cookie_scope,
    first_scope,
    header_scope,
    shared_scope,
    user_scope,
)
from retrysafe.stores.url import open_store

__version__ = "0.1.0"

__all__ = [
    "AtomicUnsupported",
    "ClaimTakenOver",
    "Completion",
    "ConfigurationError",
    "ForeignConnection",
    "IdempotencyConflict",
    "InvalidKey",
    "KeyMismatch",
    "NoAtomicContext",
    "Outcome",
    "Policy",
    "Problem",
    "RetrySafeError",
    "StillInFlight",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "Unreplayable",
    "__version__",
    "authorization_scope",
    "cookie_scope",
    "current_key",
    "derive_key",
    "first_scope",
    "header_scope",
    "lease_lost",
    "new_key",
    "open_store",
    "shared_scope",
    "user_scope",
]

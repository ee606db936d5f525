"""retrysafe: idempotency keys done right, so retries are safe.

Public names only. The modules behind them are private (``_engine``, ``_policy``, ...); the
packages (``retrysafe.stores``, ``retrysafe.http``, ``retrysafe.tools``, ...) export their own
names, ``retrysafe.errors`` holds every exception and ``retrysafe.testing`` what a test suite
needs.
"""

from __future__ import annotations

from retrysafe._context import current_key, key_scope, next_derived_key
from retrysafe._keys import derive_key, new_key
from retrysafe._lease import lease_lost
from retrysafe._outcomes import Completion, Outcome
from retrysafe._policy import Policy, Problem
from retrysafe._scopes import (
    authorization_scope,
    cookie_scope,
    first_scope,
    header_scope,
    shared_scope,
    user_scope,
)
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
    "key_scope",
    "lease_lost",
    "new_key",
    "next_derived_key",
    "open_store",
    "shared_scope",
    "user_scope",
]

"""Store ids of HTTP keys, for tests that look records up (or plant them) directly.

Tests that are not about who owns a key run the middleware with ``Policy(scope=shared_scope)``
and send no credentials. The store id of such a key is keyed by the principal secret, which the
middleware keeps in the store: :func:`shared_id` loads (or creates) it the way the middleware
does, so it works before the first request as well as after.
"""

from __future__ import annotations

from retrysafe._fingerprint import RequestFacts
from retrysafe._keyring import Keyring
from retrysafe._policy import storage_id
from retrysafe._scopes import Scope, shared_scope
from retrysafe.stores._base import Store


def http_id(store: Store, key: str, scope: Scope = shared_scope, *headers: tuple[str, str]) -> str:
    """The store id the middleware gives ``key`` sent with ``headers`` under ``scope``."""
    principal = scope(RequestFacts("POST", "/", "", headers, b""))
    assert principal is not None, "this request has no principal under that scope"
    return storage_id(Keyring(None).load(store).id_of(principal), key)


def shared_id(store: Store, key: str) -> str:
    """The store id of ``key`` sent under ``shared_scope``."""
    return http_id(store, key)

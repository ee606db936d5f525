"""Where the secret that keys principal ids comes from (see :mod:`retrysafe._scopes`).

In order: ``Policy.secret``, then the environment variable ``RETRYSAFE_SECRET``, then a secret
kept in the store itself. The stored one is created on first use, atomically, as a record
under an id no request can produce (storage ids are 64 hex digits): the first process to
``claim`` it writes a fresh random secret as the record's fingerprint, and every other process
finds that record and adopts the same secret, so all processes sharing a store agree. It lives
and dies with the records it protects: a store wiped clean starts with a new secret.

Every process sharing a store must use the same source: one process with ``RETRYSAFE_SECRET``
and one without would file the same principal's keys under different ids. Rotating the secret
(a new ``RETRYSAFE_SECRET``, or ``retrysafe keys delete --id retrysafe-principal-secret``,
then restarting every process) makes every existing record unreachable: a retry of an
operation first sent before the rotation runs again. docs/observability.md says more.
"""

from __future__ import annotations

import os
import secrets

from retrysafe._records import Claimed, ClaimResult, StoredResponse
from retrysafe._scopes import PrincipalKey, check_secret
from retrysafe.stores import AsyncStore, Store

SECRET_ENV = "RETRYSAFE_SECRET"
SECRET_ID = "retrysafe-principal-secret"
_FOREVER = 100 * 365 * 86400.0  # the stored secret's lease and TTL: it must outlive any record
_KEPT = StoredResponse(204)  # the record's body: the secret is its fingerprint


def configured_secret(explicit: str | None) -> str | None:
    """The operator's secret: ``explicit`` (``Policy.secret``), else ``$RETRYSAFE_SECRET``."""
    if explicit is not None:
        return check_secret(explicit, "Policy.secret")
    from_env = os.environ.get(SECRET_ENV)
    return check_secret(from_env, SECRET_ENV) if from_env else None


class Keyring:
    """One middleware's principal key, loaded from the store once when not configured."""

    __slots__ = ("current",)

    def __init__(self, explicit: str | None) -> None:
        secret = configured_secret(explicit)
        self.current: PrincipalKey | None = PrincipalKey(secret) if secret else None

    def load(self, store: Store) -> PrincipalKey:
        """The key, reading (or creating) the stored secret on first use. Raises StoreError."""
        if self.current is None:
            candidate = secrets.token_hex(32)
            result = store.claim(SECRET_ID, candidate, _FOREVER)
            if isinstance(result, Claimed):
                store.complete(SECRET_ID, result.token, _KEPT, _FOREVER, 0.0)
            self.current = PrincipalKey(_adopted(result, candidate))
        return self.current

    async def aload(self, store: AsyncStore) -> PrincipalKey:
        """:meth:`load` for async stores."""
        if self.current is None:
            candidate = secrets.token_hex(32)
            result = await store.aclaim(SECRET_ID, candidate, _FOREVER)
            if isinstance(result, Claimed):
                await store.acomplete(SECRET_ID, result.token, _KEPT, _FOREVER, 0.0)
            self.current = PrincipalKey(_adopted(result, candidate))
        return self.current


def _adopted(result: ClaimResult, candidate: str) -> str:
    # Claimed: ours is the secret. Existing: another process's, in flight or completed (a
    # claim with a different fingerprint never takes the record over, even past its lease).
    return candidate if isinstance(result, Claimed) else result.record.fingerprint


def stored_secret(store: Store) -> str | None:
    """The secret kept in ``store``, if one was ever created (for ``retrysafe keys``)."""
    record = store.get(SECRET_ID)
    return record.fingerprint if record is not None else None

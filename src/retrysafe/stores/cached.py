"""``CachedStore``: any store, with replays of completed records answered from process memory.

Opt-in (issue 3, "a replay within 10 µs of the bare app")::

    store = CachedStore(open_store("redis://..."), max_records=10_000)
    store = open_store("redis://...?local_cache=10000&local_cache_bytes=67108864")

A completed record with a stored response cannot change until its TTL lapses, so a claim of it
is answered the same way every time: ``Existing(record)``, which ``decide`` turns into a replay
(same fingerprint) or a 422 (another fingerprint, SPEC 9). The wrapper keeps such records, keyed
by storage id, in an LRU bounded by entry count and bytes (``_replay_cache.py``), and answers
those claims with no store round trip until a local deadline safely before the record's TTL.
Past it, the claim goes to the store again, so ``expired`` still comes from the store (SPEC 14).

Entries come from a completion made through the wrapper and from a claim the store answered
with a completed record (a record another process completed is cached on its first replay
here). Everything else - in-flight and unreplayable records, renew, release, get, watch - goes
to the store. A ``delete`` through the wrapper drops its entry; a delete made elsewhere (another
process, ``retrysafe keys delete``) is not seen: this process may replay the deleted record until
the entry's deadline. See docs/stores.md, "Local replay cache".

Attributes the wrapper does not define (``stats``, ``purge``, ``unit`` for atomic completion,
``drop_schema``...) are the wrapped store's.
"""

from __future__ import annotations

import time
from typing import Any

from retrysafe._records import ClaimResult, Record, StoredResponse
from retrysafe.stores._base import DualStore
from retrysafe.stores._replay_cache import DEFAULT_MAX_BYTES, Clock, ReplayCache

__all__ = ["CachedStore"]


class CachedStore:
    """Wraps a :class:`~retrysafe.stores.DualStore`; the wrapper is one too.

    ``clock`` is the local clock the deadlines run on (monotonic; injectable for tests, where
    it must be the fake clock the wrapped store runs on).
    """

    def __init__(
        self,
        inner: DualStore,
        max_records: int = 10_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        clock: Clock = time.monotonic,
        url: str | None = None,
    ) -> None:
        self.inner = inner
        self.url = url or inner.url
        self.cache = ReplayCache(max_records, max_bytes, clock=clock)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here: the wrapped store's extras.
        if name == "inner":  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- sync ----------------------------------------------------------------------------

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        cache = self.cache
        hit = cache.answer(id)
        if hit is not None:
            return hit
        ticket = cache.ticket()
        result = self.inner.claim(id, fingerprint, lease)
        cache.claimed(ticket, id, fingerprint, lease, result)
        return result

    def renew(self, id: str, token: int, lease: float) -> bool:
        return self.inner.renew(id, token, lease)

    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        ticket = self.cache.ticket()
        ok = self.inner.complete(id, token, response, ttl, retention)
        self.cache.completed(ticket, id, token, response, ttl, retention, ok)
        return ok

    def release(self, id: str, token: int) -> bool:
        self.cache.released(id, token)
        return self.inner.release(id, token)

    def get(self, id: str) -> Record | None:
        return self.inner.get(id)

    def watch(self, id: str, timeout: float) -> None:
        self.inner.watch(id, timeout)

    def delete(self, id: str) -> bool:
        self.cache.forget(id)
        try:
            return self.inner.delete(id)
        finally:
            self.cache.forget(id)  # and whatever a concurrent claim cached meanwhile

    def close(self) -> None:
        self.cache.clear()
        self.inner.close()

    # -- async ---------------------------------------------------------------------------

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        cache = self.cache
        hit = cache.answer(id)
        if hit is not None:
            return hit
        ticket = cache.ticket()
        result = await self.inner.aclaim(id, fingerprint, lease)
        cache.claimed(ticket, id, fingerprint, lease, result)
        return result

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        return await self.inner.arenew(id, token, lease)

    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool:
        ticket = self.cache.ticket()
        ok = await self.inner.acomplete(id, token, response, ttl, retention)
        self.cache.completed(ticket, id, token, response, ttl, retention, ok)
        return ok

    async def arelease(self, id: str, token: int) -> bool:
        self.cache.released(id, token)
        return await self.inner.arelease(id, token)

    async def aget(self, id: str) -> Record | None:
        return await self.inner.aget(id)

    async def awatch(self, id: str, timeout: float) -> None:
        await self.inner.awatch(id, timeout)

    async def adelete(self, id: str) -> bool:
        self.cache.forget(id)
        try:
            return await self.inner.adelete(id)
        finally:
            self.cache.forget(id)

    async def aclose(self) -> None:
        self.cache.clear()
        await self.inner.aclose()

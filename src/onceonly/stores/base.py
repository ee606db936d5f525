"""The store protocols: the only contract between the engine and a database (DESIGN.md).

Every method is one atomic operation on the store's side, timed by the store's clock:

- ``claim``    take the key (or report the live record holding it); a lapsed lease is taken
               over with a new fencing token in the same step. No check-then-set.
- ``renew``    extend the lease (heartbeat); only the current token may.
- ``complete`` keep the result for ``ttl`` and a tombstone for a further ``retention``.
- ``release``  drop the claim so a retry runs again.
- ``get``      read a record (admin and tests; the request path never needs it).
- ``watch``    return once the record is no longer in flight, or after ``timeout``.
- ``delete``   remove a record whatever its state (admin).

``renew``, ``complete`` and ``release`` return False when the token no longer holds the key
(fenced out). Round trips are part of the contract: a replay costs one (``claim``), a first
execution two (``claim``, ``complete``).

Sync and async twins sit side by side in every store, same order, ``a``-prefixed (STYLE 5).
Failures surface as :class:`onceonly.errors.StoreError` subclasses only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from onceonly.records import ClaimResult, Record, StoredResponse


@runtime_checkable
class Store(Protocol):
    """The synchronous face of a store."""

    url: str

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult: ...
    def renew(self, id: str, token: int, lease: float) -> bool: ...
    def complete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool: ...
    def release(self, id: str, token: int) -> bool: ...
    def get(self, id: str) -> Record | None: ...
    def watch(self, id: str, timeout: float) -> None: ...
    def delete(self, id: str) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """The asynchronous face of a store."""

    url: str

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult: ...
    async def arenew(self, id: str, token: int, lease: float) -> bool: ...
    async def acomplete(
        self, id: str, token: int, response: StoredResponse, ttl: float, retention: float
    ) -> bool: ...
    async def arelease(self, id: str, token: int) -> bool: ...
    async def aget(self, id: str) -> Record | None: ...
    async def awatch(self, id: str, timeout: float) -> None: ...
    async def adelete(self, id: str) -> bool: ...
    async def aclose(self) -> None: ...


class DualStore(Store, AsyncStore, Protocol):
    """A store with both faces; every store onceonly ships is one."""


@runtime_checkable
class AtomicUnit(Protocol):
    """One claimed execution's unit of work in a store that offers atomic completion (SPEC 13a).

    The handler's transaction opens lazily (``connection``); ``mark`` commits a recovery point;
    ``complete`` writes the record's completion in the same transaction and commits once,
    returning False (all rolled back) when the fencing token was taken over. ``holding`` is
    True while a transaction is open. Sync and async twins, as everywhere (STYLE 5).
    """

    id: str
    token: int

    @property
    def holding(self) -> bool: ...
    @property
    def phases(self) -> tuple[str, ...]: ...
    def load(self) -> None: ...
    def connection(self) -> object: ...
    def mark(self, name: str) -> None: ...
    def complete(self, response: StoredResponse, ttl: float, retention: float) -> bool: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...
    async def aload(self) -> None: ...
    async def aconnection(self) -> object: ...
    async def amark(self, name: str) -> None: ...
    async def acomplete(self, response: StoredResponse, ttl: float, retention: float) -> bool: ...
    async def aabort(self) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class AtomicStore(Protocol):
    """A store whose records can commit in the application's own transaction (SPEC 13a)."""

    def unit(
        self, id: str, token: int, fingerprint: str, lease: float, keep: float
    ) -> AtomicUnit: ...

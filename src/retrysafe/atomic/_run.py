"""What the adapters (ASGI, WSGI, ``@idempotent``) share to run an execution atomically.

The adapter claims as usual; on ``Execute`` it opens a unit (:func:`open_unit`), binds it while
the handler runs, and ends it with :func:`finish`: a ``Complete`` settlement commits the record
with the handler's writes, a ``Release`` rolls them back and releases the claim (SPEC 12).
"""

from __future__ import annotations

import enum
import logging

from retrysafe._shield import shielded
from retrysafe.decide import Complete, Release, Settlement
from retrysafe.errors import AtomicUnsupported, StoreError
from retrysafe.policy import Policy
from retrysafe.stores.base import AsyncStore, AtomicStore, AtomicUnit, Store

log = logging.getLogger("retrysafe")


class Ending(enum.Enum):
    """How an atomic execution ended."""

    COMMITTED = "committed"  # the record and the handler's writes are durable together
    RELEASED = "released"  # writes rolled back, claim released: a retry runs again
    TAKEN_OVER = "taken_over"  # fenced out at commit: writes rolled back, another attempt holds it


def require_atomic(store: object) -> AtomicStore:
    """``store`` as an :class:`AtomicStore`, or :class:`AtomicUnsupported` saying why not."""
    if not isinstance(store, AtomicStore):
        name = type(store).__name__
        raise AtomicUnsupported(
            f"{name} cannot complete records atomically with the application's writes: only "
            "a store in the same SQL database as those writes can (sqlite:///..., "
            "postgresql://...); use one of those, or drop atomic=True"
        )
    return store


def atomic_policy(policy: Policy) -> Policy:
    """The policy of an atomic middleware: a key is required on every covered request.

    An atomic handler's writes commit only together with a record, and a keyless request has
    none: ``atomic.transaction()`` would raise NoAtomicContext and the client get a 500. The
    request is refused with 400 missing-key instead, before the handler runs. A callable
    ``required`` is the application's own choice of which requests need a key: it is kept.
    """
    return policy.replace(required=True) if policy.required is False else policy


def open_unit(store: object, id: str, token: int, fingerprint: str, policy: Policy) -> AtomicUnit:
    unit = require_atomic(store).unit(
        id, token, fingerprint, policy.lease_s, policy.ttl_s + policy.retention_s
    )
    unit.load()
    return unit


async def aopen_unit(
    store: object, id: str, token: int, fingerprint: str, policy: Policy
) -> AtomicUnit:
    unit = require_atomic(store).unit(
        id, token, fingerprint, policy.lease_s, policy.ttl_s + policy.retention_s
    )
    await unit.aload()
    return unit


def _flushed(unit: AtomicUnit, store: Store) -> None:
    """Flush pending ORM changes; a failure there is the handler's failure (SPEC 12)."""
    try:
        unit.flush()
    except BaseException:
        unit.abort()
        store.release(unit.id, unit.token)
        raise


def finish(unit: AtomicUnit, store: Store, what: Settlement, policy: Policy) -> Ending:
    """Commit or roll back ``unit`` as ``what`` says; always gives its connection back.

    A :class:`StoreError` while committing propagates: nothing was committed, and the claim
    stays in flight until its lease lapses (a retry then runs cleanly).
    """
    try:
        if unit.lost:  # refused earlier; the handler's answer (maybe a 500) is moot
            unit.abort()
            return Ending.TAKEN_OVER
        match what:
            case Complete(response):
                _flushed(unit, store)
                ok = unit.complete(response, policy.ttl_s, policy.retention_s)
                return Ending.COMMITTED if ok else Ending.TAKEN_OVER
            case Release():
                unit.abort()
                try:
                    store.release(unit.id, unit.token)
                except StoreError as exc:  # the writes are gone; the lease lapses in time
                    log.error("could not release idempotency record %s: %s", unit.id[:12], exc)
                return Ending.RELEASED
    finally:
        unit.close()


async def afinish(unit: AtomicUnit, store: AsyncStore, what: Settlement, policy: Policy) -> Ending:
    """:func:`finish` for async adapters; shielded, so a cancelled request still settles."""
    return await shielded(_afinish(unit, store, what, policy))


async def _afinish(unit: AtomicUnit, store: AsyncStore, what: Settlement, policy: Policy) -> Ending:
    try:
        if unit.lost:
            await unit.aabort()
            return Ending.TAKEN_OVER
        match what:
            case Complete(response):
                try:
                    await unit.aflush()
                except BaseException:
                    await unit.aabort()
                    await store.arelease(unit.id, unit.token)
                    raise
                ok = await unit.acomplete(response, policy.ttl_s, policy.retention_s)
                return Ending.COMMITTED if ok else Ending.TAKEN_OVER
            case Release():
                await unit.aabort()
                try:
                    await store.arelease(unit.id, unit.token)
                except StoreError as exc:
                    log.error("could not release idempotency record %s: %s", unit.id[:12], exc)
                return Ending.RELEASED
    finally:
        await unit.aclose()

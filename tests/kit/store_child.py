"""Code that runs in child processes (multiprocessing, spawn context) for the store tests.

Kept apart from the test modules so a spawned child imports only this, the store and the
standard library. Everything crossing the process boundary is plain tuples.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from retrysafe._records import Claimed, ClaimResult, Existing, StoredResponse
from retrysafe.stores.sqlite import SQLiteStore

FP = "fp-original"
# (kind, token, fingerprint of the record seen or None, state seen or None)
Outcome = tuple[str, int, str | None, str | None]


def describe(result: ClaimResult) -> Outcome:
    if isinstance(result, Claimed):
        return ("claimed", result.token, None, None)
    return ("existing", result.record.token, result.record.fingerprint, result.record.state.value)


class CheckThenSet:
    """What a store must never do: look, then write in a separate step.

    Only the public API is used (``get``, then ``delete`` + ``claim`` after a pause), so two
    callers that both looked before either wrote will both be told ``Claimed``. The race tests
    run this through their harness once, to prove the harness can see a double claim at all.
    """

    def __init__(self, store: Any, window: float) -> None:
        self.store = store
        self.window = window

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        current = self.store.get(id)
        if current is not None:
            return Existing(current)
        time.sleep(self.window)
        self.store.delete(id)
        result: ClaimResult = self.store.claim(id, fingerprint, lease)
        return result

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        current = await self.store.aget(id)
        if current is not None:
            return Existing(current)
        await asyncio.sleep(self.window)
        await self.store.adelete(id)
        result: ClaimResult = await self.store.aclaim(id, fingerprint, lease)
        return result

    def get(self, id: str) -> Any:
        return self.store.get(id)


def claimer(
    path: str,
    id: str,
    attempts: int,
    rounds: int,
    barrier: Barrier,
    results: Any,
    racy: bool,
) -> None:
    """Claim ``id`` ``attempts`` times per round; rounds start and end on ``barrier``."""
    import os

    real = SQLiteStore(path)
    store: Any = CheckThenSet(real, 0.05) if racy else real
    try:
        for round in range(rounds):
            barrier.wait(timeout=60)  # everyone (and the parent) starts together
            outcomes = [describe(store.claim(id, f"{FP}-{os.getpid()}", 60.0))]
            outcomes += [describe(store.claim(id, FP, 60.0)) for _ in range(attempts - 1)]
            results.put((round, os.getpid(), outcomes))
            barrier.wait(timeout=60)  # the parent inspects (and releases) between rounds
    finally:
        real.close()


def body_for(id: str) -> bytes:
    """A response body derived from the id, so a torn or mixed-up body is detectable."""
    seed = hashlib.sha256(id.encode()).digest()
    return seed * 512 + id.encode()  # ~16 KiB, binary


def response_for(id: str) -> StoredResponse:
    return StoredResponse(201, (("Content-Type", "application/octet-stream"),), body_for(id))


def hold(path: str, id: str, lease: float, conn: Connection) -> None:
    """Claim ``id`` with a short lease, report the token and the wall-clock time from before the
    claim (the store's clock), then block until killed."""
    store = SQLiteStore(path)
    claiming = time.time()
    result = store.claim(id, FP, lease)
    conn.send((describe(result), claiming))
    conn.recv()  # never answered: the parent SIGKILLs us while we hold the claim


def storm(path: str, prefix: str, conn: Connection) -> None:
    """Claim and complete fresh ids as fast as possible; ack each completion on ``conn``."""
    store = SQLiteStore(path)
    i = 0
    while True:
        id = f"{prefix}-{i}"
        result = store.claim(id, FP, 60.0)
        assert isinstance(result, Claimed)
        assert store.complete(id, result.token, response_for(id), 3600.0, 3600.0)
        conn.send(i)
        i += 1


def hold_then_settle(path: str, id: str, conn: Connection) -> None:
    """Claim ``id``, report the token, then complete or release it when told to."""
    store = SQLiteStore(path)
    result = store.claim(id, FP, 60.0)
    conn.send(describe(result))
    how = conn.recv()
    assert isinstance(result, Claimed)
    if how == "complete":
        done = store.complete(id, result.token, response_for(id), 3600.0, 3600.0)
    else:
        done = store.release(id, result.token)
    conn.send(done)
    store.close()


def complete_through_cache(url: str, id: str, conn: Connection) -> None:
    """Process A: claim and complete ``id`` through ``open_store(url)`` (a cached store)."""
    from retrysafe import open_store

    store = open_store(url)
    try:
        result = store.claim(id, FP, 60.0)
        assert isinstance(result, Claimed)
        conn.send(store.complete(id, result.token, response_for(id), 3600.0, 3600.0))
    finally:
        store.close()


def replay_through_cache(url: str, id: str, times: int, conn: Connection) -> None:
    """Process B: claim ``id`` ``times`` times through ``open_store(url)``; report, per claim,
    (state seen, whether the cache answered, body matches), and how many claims reached the
    store (the cached store wraps a counting one)."""
    from retrysafe import open_store
    from retrysafe.stores.cached import CachedStore
    from retrysafe.testing import RecordingStore

    opened = open_store(url)
    assert isinstance(opened, CachedStore)
    counting = RecordingStore(opened.inner)
    store = CachedStore(counting, opened.cache.max_records)
    try:
        seen = []
        for _ in range(times):
            result = store.claim(id, FP, 60.0)
            assert isinstance(result, Existing)
            response = result.record.response
            same = response is not None and response.body == body_for(id)
            seen.append((result.record.state.value, result.cached, same))
        conn.send((seen, counting.tally.calls["claim"]))
    finally:
        store.close()

"""Async SQLite writes that find the writer gate taken wait for it as one batch
(stores/sqlite.py, ``SQLiteStore._awrite``).

The batch enters the gate once and runs its writes in one transaction, each inside a SAVEPOINT
of its own. What must hold: each caller gets its own write's answer, an error rolls back and
reaches only its own write, a caller cancelled before the batch runs has its write left out,
and writes that arrive once the batch has the gate start the next batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from retrysafe._records import Claimed, State, StoredResponse
from retrysafe.stores.sqlite import SQLiteStore

LEASE = 600.0
TTL = 3600.0
WAIT = 30.0  # bounds a hang only


def response(body: bytes) -> StoredResponse:
    return StoredResponse(201, (("content-type", "application/json"),), body, True, None, None)


async def batch_formed(store: SQLiteStore, size: int) -> list[object]:
    """Let the tasks run until ``size`` writes wait in this loop's batch (counted turns)."""
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        batch = store._gathering.get(loop)
        if batch is not None and len(batch) >= size:
            return list(batch)
        await asyncio.sleep(0)
    raise AssertionError(f"{size} writes never gathered: {store._gathering.get(loop)}")


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, WAIT))  # type: ignore[arg-type]


def test_writes_behind_a_taken_gate_run_as_one_batch_each_with_its_own_answer(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "app.db")
    keys = [f"k{i}" for i in range(30)]

    async def scenario() -> None:
        hold = store.enter_gate()  # another writer of this process holds the gate
        tasks = [asyncio.create_task(store.aclaim(k, f"fp-{k}", LEASE)) for k in keys]
        assert len(await batch_formed(store, len(keys))) == len(keys)
        hold.release()
        claims = await asyncio.gather(*tasks)
        assert all(isinstance(c, Claimed) for c in claims)
        for key, claim in zip(keys, claims, strict=True):
            record = store.get(key)
            assert record is not None
            assert (record.fingerprint, record.state) == (f"fp-{key}", State.IN_FLIGHT)
            assert isinstance(claim, Claimed)
            assert record.token == claim.token  # this caller's own claim
        assert len({c.token for c in claims if isinstance(c, Claimed)}) == len(keys)

    try:
        run(scenario())
    finally:
        store.close()


def test_an_error_rolls_back_only_its_own_write(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")

    async def scenario() -> None:
        first = await store.aclaim("held", "fp", LEASE)
        assert isinstance(first, Claimed)
        hold = store.enter_gate()
        before = [asyncio.create_task(store.aclaim(f"a{i}", "fp", LEASE)) for i in range(5)]
        # Headers that cannot be stored (bytes, not text): this completion fails inside the
        # batch's transaction, after the claims before it and before those after it.
        bad = StoredResponse(201, ((b"x", b"y"),), b"no", True, None, None)  # type: ignore[arg-type]
        failing = asyncio.create_task(store.acomplete("held", first.token, bad, TTL, TTL))

        def claim_then_fail(conn: sqlite3.Connection) -> None:
            # Writes a record, then fails: its SAVEPOINT must take the record back.
            store._claim_in(conn, "partial", "fp", LEASE)
            raise ZeroDivisionError("after writing")

        partial = asyncio.create_task(store._awrite(claim_then_fail, None))
        after = [asyncio.create_task(store.aclaim(f"b{i}", "fp", LEASE)) for i in range(5)]
        await batch_formed(store, 12)
        hold.release()
        with pytest.raises(TypeError):
            await failing
        with pytest.raises(ZeroDivisionError):
            await partial
        assert store.get("partial") is None
        claims = await asyncio.gather(*before, *after)
        assert all(isinstance(c, Claimed) for c in claims)
        for key in [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]:
            record = store.get(key)
            assert record is not None
            assert record.state is State.IN_FLIGHT
        held = store.get("held")
        assert held is not None
        assert held.state is State.IN_FLIGHT  # the failed completion left nothing behind
        assert await store.acomplete("held", first.token, response(b"ok"), TTL, TTL)

    try:
        run(scenario())
    finally:
        store.close()


def test_a_caller_cancelled_before_its_batch_runs_has_its_write_left_out(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")

    async def scenario() -> None:
        hold = store.enter_gate()
        kept = asyncio.create_task(store.aclaim("kept", "fp", LEASE))
        dropped = asyncio.create_task(store.aclaim("dropped", "fp", LEASE))
        await batch_formed(store, 2)
        dropped.cancel()
        hold.release()
        assert isinstance(await kept, Claimed)
        with pytest.raises(asyncio.CancelledError):
            await dropped
        assert store.get("dropped") is None
        assert store.get("kept") is not None

    try:
        run(scenario())
    finally:
        store.close()


def test_writes_arriving_once_the_batch_has_the_gate_start_the_next_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "app.db")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hold = store.enter_gate()
        first = [asyncio.create_task(store.aclaim(f"f{i}", "fp", LEASE)) for i in range(3)]
        gathered = await batch_formed(store, 3)
        hold.release()  # granted to the batch: it leaves the gathering place
        for _ in range(1000):
            if store._gathering.get(loop) is not gathered:
                break
            await asyncio.sleep(0)
        assert store._gathering.get(loop) is not gathered
        assert all(isinstance(c, Claimed) for c in await asyncio.gather(*first))
        later = await store.aclaim("later", "fp", LEASE)  # the gate is free: inline, alone
        assert isinstance(later, Claimed)
        assert store._gathering.get(loop) is None

    try:
        run(scenario())
    finally:
        store.close()

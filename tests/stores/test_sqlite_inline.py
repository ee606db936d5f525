"""SQLite's async writes run inline on the event loop only while the write lock is free.

- another connection (here: another process's stand-in) holding the write lock sends the claim
  and the completion to a worker thread, which waits for the lock; the event loop keeps
  running meanwhile, and the writes land once the lock is released;
- the event loop's own connection never checkpoints (a checkpoint fsyncs), so the WAL is
  checkpointed from a worker thread every so many inline commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from retrysafe._records import Claimed, State, StoredResponse
from retrysafe.stores import sqlite as sqlite_store
from retrysafe.stores.sqlite import SQLiteStore


async def test_a_held_write_lock_sends_writes_to_a_thread_and_the_loop_keeps_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inline.db"
    store = SQLiteStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held by someone else
        claim = asyncio.create_task(store.aclaim("in-1", "fp", 30.0))
        ticks = 0
        for _ in range(20):  # the loop is free while the claim waits for the lock
            await asyncio.sleep(0.005)
            ticks += 1
        assert not claim.done()
        assert ticks == 20
        blocker.execute("COMMIT")
        claimed = await asyncio.wait_for(claim, 5)
        assert isinstance(claimed, Claimed)

        blocker.execute("BEGIN IMMEDIATE")
        done = asyncio.create_task(
            store.acomplete("in-1", claimed.token, StoredResponse(201, (), b"ok"), 60.0, 60.0)
        )
        await asyncio.sleep(0.05)
        assert not done.done()
        blocker.execute("COMMIT")
        assert await asyncio.wait_for(done, 5) is True
        record = await store.aget("in-1")
        assert record is not None
        assert (record.state, record.response) == (State.COMPLETED, StoredResponse(201, (), b"ok"))
    finally:
        blocker.close()
        store.close()


async def test_inline_commits_are_checkpointed_from_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_CHECKPOINT_EVERY", 5)
    path = tmp_path / "wal.db"
    store = SQLiteStore(path, purge_every=None)
    before = path.stat().st_size
    body = b"x" * 20_000
    try:
        for i in range(6):
            claimed = await store.aclaim(f"w-{i}", "fp", 30.0)
            assert isinstance(claimed, Claimed)
            assert await store.acomplete(
                f"w-{i}", claimed.token, StoredResponse(201, (), body), 60.0, 60.0
            )
        # Rows reach the main database file only through a checkpoint; SQLite's own
        # auto-checkpoint (1000 pages, ~4 MB) is far off, so this one is ours.
        assert path.stat().st_size > before + 5 * len(body)
    finally:
        store.close()

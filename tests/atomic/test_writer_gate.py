"""The writer gate across OS processes: waiters are woken by the writer's commit.

The parent opens an atomic transaction (it holds SQLite's write lock and the store's writer
gate); three child processes - a sync claim, an async claim, an atomic unit opened from async
code - then try to write, with a busy timeout of an hour. Counted, not timed: each child's
waiter shows up as a *blocked* ``flock`` on the gate's sidecar file in ``/proc/locks`` (one
per process: it waits in the kernel, not in SQLite's sleeping busy handler), none writes while
the parent holds, and all write once the parent commits.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from kit.atomic_gate_child import write
from kit.stores import require_service
from kit.wakes import HANG
from retrysafe._records import Claimed, State, StoredResponse
from retrysafe.stores.sqlite import SQLiteStore

KINDS = ("sync", "async", "unit")
PROC_LOCKS = Path("/proc/locks")


def blocked_on(path: str) -> int:
    """How many ``flock`` requests wait for ``path``'s lock now (Linux: ``->`` lines)."""
    inode = os.stat(path).st_ino
    lines = PROC_LOCKS.read_text().splitlines()
    return sum(
        1
        for line in lines
        if "->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{inode}")
    )


def wait_blocked(path: str, count: int) -> int:
    """Until ``count`` requests wait for the lock (returns the last count; HANG ends it)."""
    deadline = time.monotonic() + HANG
    seen = blocked_on(path)
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.005)  # polls the kernel's table: the children block in their own time
        seen = blocked_on(path)
    return seen


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    if not PROC_LOCKS.exists():
        # Skips on a developer's non-Linux machine; fails in CI, which runs on Linux.
        require_service("Linux's /proc/locks", "needed to see the waiters block in flock")
    store = SQLiteStore(tmp_path / "app.db", busy_timeout=HANG, wal_idle=None)
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TABLE ledger (key TEXT, cents INTEGER)")
    yield store
    store.close()


def test_writers_in_other_processes_wait_in_the_gate_and_are_woken_by_the_commit(
    store: SQLiteStore,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    children = []
    for kind in KINDS:
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=write, args=(store.path, kind, f"key-{kind}", theirs))
        child.start()
        pipes.append(mine)
        children.append(child)
    try:
        for pipe, kind in zip(pipes, KINDS, strict=True):
            assert pipe.poll(HANG)
            assert pipe.recv() == ("ready", f"key-{kind}")
        claimed = store.claim("key-parent", "fp", HANG)
        assert isinstance(claimed, Claimed)
        unit = store.unit("key-parent", claimed.token, "fp", HANG, HANG)
        db = unit.connection()  # the write lock and the gate, until the commit
        db.execute("INSERT INTO ledger (key, cents) VALUES ('key-parent', 1)")
        for pipe in pipes:
            pipe.send("go")

        assert wait_blocked(store.path + "-writer", len(KINDS)) == len(KINDS)
        assert not any(pipe.poll(0) for pipe in pipes)  # nobody wrote past the holder
        assert store.get("key-sync") is None
        assert store.get("key-async") is None

        assert unit.complete(StoredResponse(201, (), b"ok"), HANG, HANG)
        unit.close()

        for pipe, kind in zip(pipes, KINDS, strict=True):
            assert pipe.poll(HANG), f"the {kind} writer was not woken by the commit"
            assert pipe.recv() == ("wrote", f"key-{kind}")
    finally:
        for child in children:
            child.join(HANG)
            if child.is_alive():
                child.kill()
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert blocked_on(store.path + "-writer") == 0
    for kind in ("sync", "async"):
        record = store.get(f"key-{kind}")
        assert record is not None
        assert record.state is State.IN_FLIGHT
    with sqlite3.connect(store.path) as raw:
        rows = raw.execute("SELECT key FROM ledger ORDER BY rowid").fetchall()
    assert rows == [("key-parent",), ("key-unit",)]

"""Concurrent duplicates run once: threads, asyncio tasks, OS processes; a crash then resume.

These use a real SQLite file and real time (short leases), because what they check is how
separate threads and processes meet in the store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from pathlib import Path
from typing import Any

import pytest

from kit.children import child_argv, child_env
from retrysafe import current_key
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import agent_run, idempotent, idempotent_tool

N = 50


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "tools.db")
    yield store
    store.close()


def test_fifty_threads_run_once(sqlite_store: SQLiteStore) -> None:
    runs: list[str | None] = []
    barrier = threading.Barrier(N)

    @idempotent_tool(sqlite_store, wait=20)
    def send_refund(customer: str, cents: int) -> dict[str, Any]:
        runs.append(current_key())
        time.sleep(0.05)  # keep the first call in flight while the others arrive
        return {"customer": customer, "cents": cents}

    def one() -> dict[str, Any]:
        barrier.wait(10)
        return send_refund("cus_1", 500)

    with agent_run("run-threads"), ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(copy_context().run, one) for _ in range(N)]
        results = [f.result(30) for f in futures]
    assert len(runs) == 1
    assert results == [{"customer": "cus_1", "cents": 500}] * N


async def test_fifty_tasks_run_once(sqlite_store: SQLiteStore) -> None:
    runs: list[str | None] = []

    @idempotent(sqlite_store, key=lambda order: order, wait=20)
    async def charge(order: str) -> tuple[str, int]:
        runs.append(current_key())
        await asyncio.sleep(0.05)
        return (order, len(runs))

    results = await asyncio.gather(*(charge("o-1") for _ in range(N)))
    assert runs == ["o-1"]
    assert results == [("o-1", 1)] * N


def test_heartbeat_keeps_a_slow_call_from_being_taken_over(sqlite_store: SQLiteStore) -> None:
    runs: list[int] = []
    started = threading.Event()

    @idempotent(sqlite_store, lease=0.6, wait=5)
    def slow(n: int) -> int:
        runs.append(n)
        started.set()
        time.sleep(1.3)  # two lease lengths: only the heartbeat keeps the claim alive
        return n * 2

    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(slow(21)))
    thread.start()
    assert started.wait(5)
    assert slow(21) == 42  # waited for the holder instead of taking over its lapsed lease
    thread.join(10)
    assert out == [42]
    assert runs == [21]


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        child_argv("tools_child", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def _lines(ledger: Path) -> list[list[str]]:
    if not ledger.exists():
        return []
    return [line.split() for line in ledger.read_text().splitlines()]


@pytest.mark.slow
def test_four_processes_sharing_sqlite_run_once(tmp_path: Path) -> None:
    db, ledger, go = tmp_path / "shared.db", tmp_path / "ledger", tmp_path / "go"
    SQLiteStore(db).close()  # create the schema once, before the race
    procs = [_worker("once", str(db), str(ledger), str(go)) for _ in range(4)]
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert len(_lines(ledger)) == 1
    runner = int(_lines(ledger)[0][0])
    assert outputs == [{"customer": "cus_1", "cents": 500, "by": runner}] * 4


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_sigkill_mid_call_then_resume_reuses_the_same_key(tmp_path: Path, flavour: str) -> None:
    db, ledger = tmp_path / "crash.db", tmp_path / "ledger"
    crashed = _worker("crash", str(db), str(ledger), flavour)
    deadline = time.monotonic() + 30
    while not _lines(ledger) and time.monotonic() < deadline:  # until the side effect is done
        time.sleep(0.01)
    assert len(_lines(ledger)) == 1
    crashed.send_signal(signal.SIGKILL)
    crashed.communicate(timeout=10)
    assert crashed.returncode == -signal.SIGKILL

    resumed = _worker("resume", str(db), str(ledger), flavour)  # waits out the lease, takes over
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    (first_pid, first_key, first_down), (second_pid, second_key, second_down) = _lines(ledger)
    assert int(second_pid) == resumed.pid != int(first_pid)
    assert second_key == first_key  # same tool key after the crash...
    assert second_down == first_down  # ...so the downstream charge repeats the same key
    assert json.loads(out) == f"charged cus_2 700 in {resumed.pid}"

    again = _worker("resume", str(db), str(ledger), flavour)
    out_again, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out_again) == json.loads(out)  # replayed from the store
    assert len(_lines(ledger)) == 2

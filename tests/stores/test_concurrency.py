"""Many claims of one id at once: exactly one wins (SPEC 7 — the claim is one atomic step).

Threads and asyncio tasks race on every store kind; OS processes race on one SQLite file.

What could make these pass vacuously, and the guard against it:

- the racers run one after another instead of together -> they start on a barrier (threads,
  processes) or are all created before the loop runs any (tasks);
- an exception or a lost result is mistaken for "not claimed" -> every racer's result is
  collected and counted, and errors fail the test;
- the separate processes are not separate -> their pids are checked;
- the harness cannot see a race at all -> each harness is also run against
  :class:`CheckThenSet` (look, then write), and must catch its double claims;
- a winner is counted but the loser saw someone else -> every loser must see the winner's
  token and fingerprint.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kit.store_child import CheckThenSet, Outcome, claimer, describe, hold_then_settle
from kit.store_claims import new_id
from kit.stores import REDIS_CLUSTER, STORE_KINDS, StoreKit, kit_fixture
from kit.wakes import HANG, NEVER
from retrysafe._records import ClaimResult, Existing, State
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore

RACERS = 50

# Every store kind, and a real Redis Cluster (the claim is one script on the record's slot).
kit = kit_fixture([*sorted(STORE_KINDS), REDIS_CLUSTER])


def _one_winner(outcomes: Sequence[Outcome], racers: int) -> Outcome:
    """Exactly one ``claimed``; every other outcome saw that winner's live in-flight record."""
    assert len(outcomes) == racers, f"{racers - len(outcomes)} results went missing"
    kinds = Counter(kind for kind, *_ in outcomes)
    assert kinds == {"claimed": 1, "existing": racers - 1}, kinds
    winner = next(o for o in outcomes if o[0] == "claimed")
    seen = {(token, state) for kind, token, _, state in outcomes if kind == "existing"}
    assert seen == {(winner[1], State.IN_FLIGHT.value)}, seen
    return winner


def _race_threads(stores: Sequence[Any], id: str, fingerprints: Sequence[str]) -> list[Outcome]:
    """Each racer claims through ``stores[i % len(stores)]`` (one handle, or several as several
    processes would have)."""
    barrier = threading.Barrier(len(fingerprints))
    results: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer(store: Any, fingerprint: str) -> None:
        try:
            barrier.wait(timeout=30)
            outcome = describe(store.claim(id, fingerprint, 1000.0))
        except BaseException as exc:  # reported below; a thread must not swallow it
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(outcome)

    threads = [
        threading.Thread(target=racer, args=(stores[i % len(stores)], fp))
        for i, fp in enumerate(fingerprints)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    assert not errors, errors
    return results


async def _race_tasks(store: Any, id: str, fingerprints: Sequence[str]) -> list[Outcome]:
    # All tasks exist before any runs: they enter aclaim in the same loop iteration.
    tasks = [asyncio.create_task(store.aclaim(id, fp, 1000.0)) for fp in fingerprints]
    results: list[ClaimResult] = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return [describe(r) for r in results]


def test_threads_claiming_one_id_yield_exactly_one_winner(kit: StoreKit) -> None:
    id = new_id()
    fingerprints = [f"fp-thread-{n}" for n in range(RACERS)]
    handles = [kit.store, kit.reopen()]  # racers on two connections, as two processes
    winner = _one_winner(_race_threads(handles, id, fingerprints), RACERS)
    record = kit.store.get(id)
    assert record is not None
    assert record.token == winner[1]
    assert record.fingerprint in fingerprints
    # Every loser saw the winner's request, not its own or a third one.
    again = kit.store.claim(id, "fp-late", 1000.0)
    assert isinstance(again, Existing)
    assert again.record.fingerprint == record.fingerprint

    # After a release the key is up for grabs once more: again exactly one winner, newer token.
    assert kit.store.release(id, winner[1])
    second = _one_winner(_race_threads(handles, id, fingerprints), RACERS)
    assert second[1] > winner[1]


async def test_tasks_claiming_one_id_yield_exactly_one_winner(kit: StoreKit) -> None:
    id = new_id()
    fingerprints = [f"fp-task-{n}" for n in range(RACERS)]
    winner = _one_winner(await _race_tasks(kit.store, id, fingerprints), RACERS)
    assert await kit.store.arelease(id, winner[1])
    second = _one_winner(await _race_tasks(kit.store, id, fingerprints), RACERS)
    assert second[1] > winner[1]


def test_the_thread_harness_catches_a_check_then_set_store(tmp_path: Path) -> None:
    racy = CheckThenSet(SQLiteStore(tmp_path / "racy.db"), window=0.05)
    outcomes = _race_threads([racy], "id", [f"fp-{n}" for n in range(RACERS)])
    assert Counter(kind for kind, *_ in outcomes)["claimed"] > 1
    with pytest.raises(AssertionError):
        _one_winner(outcomes, RACERS)


async def test_the_task_harness_catches_a_check_then_set_store() -> None:
    racy = CheckThenSet(MemoryStore(), window=0.05)
    outcomes = await _race_tasks(racy, "id", [f"fp-{n}" for n in range(RACERS)])
    assert Counter(kind for kind, *_ in outcomes)["claimed"] > 1


# -- OS processes sharing one SQLite file ------------------------------------------------------

PROCESSES = 5
ATTEMPTS = 10


def _race_processes(path: Path, id: str, rounds: int, *, racy: bool = False) -> Any:
    """Run the claimers; yields each round's outcomes, then (after the last) nothing.

    A generator so the caller can act between rounds (release the key) while the children
    wait on the barrier.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=claimer, args=(str(path), id, ATTEMPTS, rounds, barrier, results, racy))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    done = False
    try:
        for round in range(rounds):
            barrier.wait(timeout=60)  # start the round
            barrier.wait(timeout=60)  # every child finished it
            got = [results.get(timeout=30) for _ in procs]
            assert {r for r, _, _ in got} == {round}
            pids = {pid for _, pid, _ in got}
            assert len(pids) == PROCESSES, "the claimers were not separate processes"
            assert pids == {p.pid for p in procs}
            yield [o for _, _, outcomes in got for o in outcomes]
        done = True
    finally:
        if not done:  # a failed check or an early close: free the children from the barrier
            barrier.abort()
        for p in procs:
            p.join(30)
            if p.is_alive():  # only after a failure above: do not leave a child behind
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * PROCESSES


@pytest.mark.slow
def test_processes_sharing_a_sqlite_file_yield_exactly_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()  # the schema exists before the race
    id = "shared-id"
    parent = SQLiteStore(path)
    try:
        rounds = _race_processes(path, id, rounds=2)
        first = _one_winner(next(rounds), PROCESSES * ATTEMPTS)
        # The loser processes saw the winning process's own first request.
        record = parent.get(id)
        assert record is not None
        assert record.token == first[1]
        assert record.fingerprint.startswith("fp-original-")
        assert parent.release(id, first[1])  # released by yet another process

        second = _one_winner(next(rounds), PROCESSES * ATTEMPTS)
        assert second[1] > first[1]
        assert next(rounds, None) is None  # children exit cleanly
        record = parent.get(id)
        assert record is not None
        assert (record.token, record.state) == (second[1], State.IN_FLIGHT)
    finally:
        parent.close()


@pytest.mark.slow
def test_the_process_harness_catches_a_check_then_set_store(tmp_path: Path) -> None:
    path = tmp_path / "racy.db"
    SQLiteStore(path).close()
    rounds = _race_processes(path, "racy-id", rounds=1, racy=True)
    outcomes = next(rounds)
    assert next(rounds, None) is None
    claims = [o for o in outcomes if o[0] == "claimed"]
    assert len(claims) > 1, "processes never overlapped: the process race proves nothing"
    assert all(isinstance(o[1], int) for o in claims)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["complete", "release"])
def test_watch_sees_a_settlement_made_by_another_process(tmp_path: Path, how: str) -> None:
    """No notification crosses processes on SQLite: the waiter's polling must see it."""
    path = tmp_path / "watched.db"
    watcher_store = SQLiteStore(path)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=hold_then_settle, args=(str(path), "watched", theirs))
    child.start()
    try:
        assert ours.poll(30)
        kind, token, _, _ = ours.recv()
        assert kind == "claimed"
        held = watcher_store.get("watched")
        assert held is not None
        assert (held.state, held.token) == (State.IN_FLIGHT, token)
        # No timeout (NEVER) and a 60 s lease in the holder: only a poll seeing the
        # settlement can end this watch before HANG.
        thread = threading.Thread(target=watcher_store.watch, args=("watched", NEVER), daemon=True)
        thread.start()
        thread.join(0.2)
        assert thread.is_alive(), "watch returned while the other process still held the key"
        ours.send(how)
        assert ours.poll(30)
        assert ours.recv() is True
        thread.join(HANG)
        assert not thread.is_alive(), "polling never saw the other process's settlement"
        record = watcher_store.get("watched")
        assert (record is None) == (how == "release")
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
        watcher_store.close()
    assert child.exitcode == 0

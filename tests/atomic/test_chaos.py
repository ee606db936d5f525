"""Exactly once under SIGKILL (SPEC 13a, issue 8): real worker processes killed mid-traffic,
on SQLite and on PostgreSQL.

A worker process charges through a real door (``@idempotent``, the WSGI or ASGI middleware,
SQLAlchemy) on a store; the charge is a ledger row in the store's own database. The parent is
the client: it sends every logical charge with its own key and retries the same key (on a
fresh worker) until it gets an answer. Kills land at named points, reported over a pipe -
before the write, after the write but before the commit (the hole), after the commit - and at
random moments. A killed worker's transaction dies with it (SQLite's journal, PostgreSQL's
server rolls back and releases the row lock).

With atomic completion, every key ends with exactly one ledger row and a completed record
that names that row. Without it, a kill after the write and before completion makes the
retry charge again: the contrast test shows that hole deterministically, so we know the chaos
test could see a double charge if there were one. A three-phase function killed in each phase
resumes after its last committed recovery point.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kit.atomic_db import (
    NAMED_POINTS,
    DbKit,
    SQLiteKit,
    Worker,
    charge_killed_at,
    charge_until_answered,
    dbkit,
    record_id,
    start,
    workers,
)
from kit.atomic_sqlite_child import PHASES
from retrysafe._keys import derive_key
from retrysafe._policy import storage_id
from retrysafe._records import Record, State
from retrysafe.atomic import DERIVED_KEY_VERSION
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools._serializer import DEFAULT_SERIALIZER

# Fixtures used here, and names modules written against the SQLite-only version import.
__all__ = ["Worker", "charge_killed_at", "dbkit", "workers"]

pytestmark = pytest.mark.slow
POINTS = NAMED_POINTS


@dataclass(frozen=True)
class Chaos:
    """One chaos run: two clients, each with its own worker behind ``doors[n]``; each client
    charges ``keys`` keys, ``named`` of them killed at a named point, ``randoms`` at a random
    moment up to ``delay`` seconds in."""

    db: str
    doors: tuple[str, str]
    keys: int
    named: tuple[str, ...]
    randoms: int
    delay: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.db}-{'+'.join(dict.fromkeys(self.doors))}"


# Sizes that prove the point and no more: each client hits every named point once (so each
# point is killed twice per door, once per worker) and a few random moments, among enough
# unkilled keys that the two workers overlap. Every kill costs a fresh worker process.
CHAOS = [
    *(
        Chaos("sqlite", (door, door), 16, NAMED_POINTS, 3, 0.006, seed)
        for door, seed in (("function", 13), ("wsgi", 8), ("asgi", 21))
    ),
    Chaos("postgres", ("function", "afunction"), 12, ("after_write", "after_commit"), 2, 0.01, 8),
]


def record_of(store: SQLiteStore, door: str, key: str) -> Record | None:
    return store.get(record_id(door, key))


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file with the store's tables and the ledger (for modules that import it)."""
    return SQLiteKit.make(tmp_path).path


def run_chaos(
    kit: DbKit, workers: list[Worker], case: Chaos
) -> tuple[list[Worker], dict[str, dict[str, Any]]]:
    rng = random.Random(case.seed)
    answers: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def client(n: int, worker: Worker, plan: list[tuple[str | None, float | None]]) -> None:
        try:
            worker.start()  # both workers start at once
            for i, (pause, timer) in enumerate(plan):
                key = f"charge-{case.seed}-{n}-{i}"
                answers[key] = charge_until_answered(worker, key, 100 + i, pause, timer)
        except BaseException as exc:
            errors.append(exc)

    threads, mine = [], []
    for n, door in enumerate(case.doors):
        plan: list[tuple[str | None, float | None]] = [(p, None) for p in case.named]
        plan += [(None, rng.uniform(0.0, case.delay)) for _ in range(case.randoms)]
        plan += [(None, None)] * (case.keys - len(plan))
        rng.shuffle(plan)
        mine.append(Worker(kit, door))
        workers.append(mine[-1])
        threads.append(threading.Thread(target=client, args=(n, mine[-1], plan)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    return mine, answers


@pytest.mark.parametrize(
    ("dbkit", "case"), [(c.db, c) for c in CHAOS], ids=[c.id for c in CHAOS], indirect=["dbkit"]
)
def test_every_charge_is_in_the_ledger_exactly_once_despite_sigkills(
    dbkit: DbKit, workers: list[Worker], case: Chaos
) -> None:
    mine, answers = run_chaos(dbkit, workers, case)
    # Per worker: one kill per named point and per random moment (a retry is never killed).
    assert [worker.kills for worker in mine] == [len(case.named) + case.randoms] * 2
    assert len(answers) == 2 * case.keys

    rows = dbkit.charges()
    assert rows == {key: [answer["row"]] for key, answer in answers.items()}, "charged twice?"
    for key, answer in answers.items():
        # The client's answer names the one row, and the record replays the same answer.
        assert answer == {"key": key, "row": rows[key][0]}
        door = case.doors[int(key.split("-")[2])]  # charge-<seed>-<client>-<i>
        record = dbkit.record(door, key)
        assert record is not None
        assert record.state is State.COMPLETED
        assert record.response is not None
        body = record.response.body
        http = door in ("wsgi", "asgi")
        assert (json.loads(body) if http else DEFAULT_SERIALIZER.loads(body)) == answer
        assert record.phase is None
    dbkit.check_intact()
    assert dbkit.states() == ["completed"]


PLAIN = [("sqlite", "function"), ("sqlite", "wsgi"), ("sqlite", "asgi"), ("postgres", "function")]


@pytest.mark.parametrize(("dbkit", "door"), PLAIN, indirect=["dbkit"])
def test_without_atomic_completion_a_kill_after_the_write_charges_twice(
    dbkit: DbKit, workers: list[Worker], door: str
) -> None:
    """The hole SPEC 13a closes, shown deterministically: the write committed on its own, the
    worker dies before completing the record, and the retry (after the lease) runs again."""
    worker = start(workers, dbkit, door, atomic=False)
    answer = charge_killed_at(worker, "hole", "after_write")
    assert worker.kills == 1
    rows = dbkit.charges()["hole"]
    assert len(rows) == 2, "the plain path should have charged twice"
    assert answer == {"key": "hole", "row": rows[1]}


# (database, door, the points a charge is killed at): on SQLite the chaos run above already
# kills every door at every point, so one kill in the hole suffices here.
KILLS = [
    *(("sqlite", door, ("after_write",)) for door in ("function", "wsgi", "asgi")),
    *(("postgres", door, NAMED_POINTS) for door in ("function", "afunction", "sqla", "asqla")),
]


@pytest.mark.parametrize(("dbkit", "door", "points"), KILLS, indirect=["dbkit"])
def test_with_atomic_completion_every_kill_leaves_exactly_one_charge(
    dbkit: DbKit, workers: list[Worker], door: str, points: tuple[str, ...]
) -> None:
    worker = start(workers, dbkit, door)
    answers = {point: charge_killed_at(worker, point, point) for point in points}
    kind, _, calm = worker.send("calm", None)
    assert kind == "done"
    assert worker.kills == len(points)
    charges = dbkit.charges()
    assert charges == {key: [answer["row"]] for key, answer in [*answers.items(), ("calm", calm)]}
    for key in charges:
        record = dbkit.record(door, key)
        assert record is not None
        assert record.state is State.COMPLETED


# (pause point, the phase a takeover resumes after, the phases it runs)
RESUMES = [
    ("after_reserve", "reserve", ["charge", "receipt"]),
    ("called_charge", "reserve", ["charge", "receipt"]),
    ("after_charge", "charge", ["receipt"]),
    ("called_receipt", "charge", ["receipt"]),
]


@pytest.mark.parametrize(("point", "resumed_at", "ran"), RESUMES)
def test_a_killed_three_phase_call_resumes_after_its_last_committed_phase(
    dbkit: DbKit, workers: list[Worker], point: str, resumed_at: str, ran: list[str]
) -> None:
    worker = start(workers, dbkit, phased=True)
    assert worker.send("ride", point) == ("paused", "ride", point)
    assert worker.kill() == []
    # The retry, on a fresh worker after the lease.
    assert worker.send("ride", None) == ("done", "ride", {"resumed_at": resumed_at, "ran": ran})

    # Every phase's own write is in the ledger exactly once.
    charges = dbkit.charges()
    assert list(charges) == [f"ride/{phase}" for phase in PHASES]
    assert all(len(rows) == 1 for rows in charges.values())
    # Foreign calls: a phase repeated by the resumed run re-sent the very same derived key,
    # so the foreign service kept one effect per phase.
    id = storage_id("function\0ride", "ride")
    expected = {phase: derive_key(DERIVED_KEY_VERSION, id, phase) for phase in PHASES}
    calls, effects = dbkit.foreign()
    assert effects == expected
    assert all(key == expected[phase] for key, phase in calls)
    repeated = [phase for phase in PHASES if [p for _, p in calls].count(phase) == 2]
    assert repeated == ([point.removeprefix("called_")] if point.startswith("called_") else [])
    record = dbkit.get(id)
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.phase is None

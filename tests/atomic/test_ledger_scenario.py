"""Issue 8's scenario end to end (``ledger_scenario.py``), on SQLite and on PostgreSQL.

Two uvicorn workers book charges as rows in the store's own database; a killer SIGKILLs a
random worker every ``kill_every`` seconds and every ``crash_every``-th charge kills its worker
right after the write; a proxy cuts 30 % of the answers after the worker executed; the client
retries with one key per charge and parks what it cannot finish in a DLQ, replayed at the end.

With atomic completion every charge is in the ledger exactly once. With plain completion each
kill between the write and the completion makes the retry charge again; the test asserts it
(the forced crashes make it deterministic), so the atomic run could see a double if there were
one. ``RETRYSAFE_LEDGER_CHARGES=1000`` (and the other ``LedgerConfig`` fields) run it bigger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kit.atomic_ledger import Database, LedgerConfig, LedgerRun, open_database, run_ledger

pytestmark = pytest.mark.slow

CONFIG = LedgerConfig.from_env()
Record = Callable[[str, object], None]  # pytest's record_property


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with open_database(request.param, tmp_path) as db:
        yield db


def _run(database: Database, atomic: bool, tmp_path: Path, record: Record) -> LedgerRun:
    run = run_ledger(database, atomic, CONFIG, tmp_path)
    print("\n" + run.summary())
    record("ledger", run.summary())  # in the JUnit XML of a CI run
    # The faults happened: kills by the killer, one crash in the window per crash_every-th
    # charge, dropped answers, parked calls.
    assert run.kills > 0
    assert run.forced_crashes == len(range(0, CONFIG.charges, CONFIG.crash_every))
    # A kill may land on a worker that is crashing itself: one death for both.
    assert max(run.kills, run.forced_crashes) <= run.deaths <= run.kills + run.forced_crashes
    assert run.dropped > 0
    assert run.parked > 0
    # The client finished every call: the DLQ was drained, every replay got its answer.
    assert run.left_in_dlq == 0
    assert run.dlq_states == {"done": run.parked}
    assert run.answered + run.parked == CONFIG.charges
    # Nothing is missing and nothing unknown was booked, in either mode.
    assert run.missing == []
    assert run.unexpected == []
    # One key per logical charge: one record each, however many attempts and replays.
    assert sum(run.records.values()) == CONFIG.charges
    return run


def test_atomic_completion_books_every_charge_exactly_once(
    database: Database, tmp_path: Path, record_property: Record
) -> None:
    run = _run(database, True, tmp_path, record_property)
    assert run.doubled == {}, f"charged more than once: {run.doubled}"
    assert run.rows == CONFIG.charges
    assert run.wrong_answers == []  # each 201 names the charge's one row
    assert run.records == {"completed": CONFIG.charges}
    assert run.unfinished == {}


def test_plain_completion_charges_again_after_a_kill_in_the_window(
    database: Database, tmp_path: Path, record_property: Record
) -> None:
    """The contrast: the same run with the write committed on its own. Every forced crash
    (write committed, record not completed) is re-run by the retry: one extra row at least."""
    run = _run(database, False, tmp_path, record_property)
    assert run.extra_rows >= run.forced_crashes > 0
    assert len(run.doubled) >= run.forced_crashes
    assert run.rows == CONFIG.charges + run.extra_rows

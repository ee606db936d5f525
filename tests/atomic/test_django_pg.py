"""Atomic completion with Django on the real PostgreSQL (psycopg 3 backend, SPEC 13a).

The record tables come from retrysafe's Django migration (in a schema and with a table prefix
of this run's own, from the settings); the view writes with the ORM on Django's own
connection, inside ``retrysafe.atomic.django.transaction()``, and the record's completion
commits in that same transaction. Django runs in child processes only (its settings are once
per process): a WSGI worker SIGKILLed before and after the commit, and named scenarios
(takeovers, misconfigurations) that report what they saw.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kit.atomic_db import Worker, record_id
from kit.atomic_django_pg_child import django_pg_worker, open_store, scenario, schema_of
from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe._records import State

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")


class Run:
    """This run's prefix (and schema, named after it): what the worker's ``db`` must give."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.schema = schema_of(prefix)

    def charges(self) -> dict[str, list[int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(f"SELECT id, key FROM {self.schema}.ledger ORDER BY id").fetchall()
        out: dict[str, list[int]] = {}
        for id, key in rows:
            out.setdefault(str(key), []).append(int(id))
        return out

    def tables(self) -> set[str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self.schema,),
            ).fetchall()
        return {str(r[0]) for r in rows}


@pytest.fixture
def run() -> Iterator[Run]:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    made = Run(POSTGRES_URL, f"dj{uuid.uuid4().hex[:12]}_")
    with psycopg.connect(made.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {made.schema}")
    try:
        yield made
    finally:
        with psycopg.connect(made.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {made.schema} CASCADE")  # ours alone: made above


def in_django(run: Run, name: str, tmp_path: Path) -> dict[str, Any]:
    """Run scenario ``name`` of ``kit.atomic_django_pg_child`` in a child process; what it
    observed."""
    ours, theirs = SPAWN.Pipe()
    proc = SPAWN.Process(target=scenario, args=(run.url, run.prefix, name, str(tmp_path), theirs))
    proc.start()
    theirs.close()
    try:
        assert ours.poll(60), f"scenario {name} never answered"
        kind, got = ours.recv()
    finally:
        proc.join(30)
        if proc.is_alive():  # it holds locks the fixture's DROP SCHEMA would wait for
            proc.kill()
            proc.join(10)
    assert kind == "done", got
    return dict(got)


@pytest.mark.parametrize("door", ["wsgi", "asgi", "asgi-async"])
def test_orm_charges_commit_with_the_record_exactly_once_under_sigkill(run: Run, door: str) -> None:
    """WSGI, and uvicorn serving Django's ASGI application (a sync view, an async view)."""
    worker = Worker(run, door, target=django_pg_worker)  # type: ignore[arg-type]
    worker.start()  # its migrate made the tables; its store opens them (init_schema=False)
    answers: dict[str, dict[str, Any]] = {}
    store = open_store(run.url, run.prefix)
    try:
        assert {f"{run.prefix}records", f"{run.prefix}records_phases", "ledger"} <= run.tables()
        for point in ("before_write", "after_write", "after_commit"):
            key = f"dj-{point}"
            assert worker.send(key, point) == ("paused", key, point)
            worker.kill()
            record, rows = store.get(record_id(door, key)), run.charges().get(key, [])
            assert record is not None
            if point == "after_commit":  # both or neither
                assert (record.state, len(rows)) == (State.COMPLETED, 1)
            else:
                assert (record.state, rows) == (State.IN_FLIGHT, [])
            kind, got, answers[key] = worker.send(key, None)  # after the dead lease lapses
            assert (kind, got) == ("done", key)
        kind, _, answers["calm"] = worker.send("calm", None)
        assert kind == "done"
    finally:
        worker.stop()
        store.close()
    assert worker.kills == 3
    charges = run.charges()
    assert charges == {key: [answer["row"]] for key, answer in answers.items()}
    store = open_store(run.url, run.prefix)
    try:
        states = {key: getattr(store.get(record_id(door, key)), "state", None) for key in answers}
    finally:
        store.close()
    assert states == dict.fromkeys(answers, State.COMPLETED)


def test_a_takeover_between_phases_rolls_back_the_old_holders_later_writes(
    run: Run, tmp_path: Path
) -> None:
    seen = in_django(run, "takeover_between_phases", tmp_path)
    assert seen["old"] == "ClaimTakenOver"
    assert seen["new"] == ["new"]  # the retry resumed after phase one and committed
    # Phase one's write stays; the old holder's write after it is gone; the new holder's stands.
    assert seen["ledger"] == [("fph", 1), ("fph", 3)]
    assert seen["hooks"] == ["new"]  # on_commit callbacks of the rolled-back attempt dropped
    assert seen["replay"] == "new"


def test_a_takeover_before_the_first_transaction_fences_the_old_holder(
    run: Run, tmp_path: Path
) -> None:
    seen = in_django(run, "fenced_at_begin", tmp_path)
    assert seen == {"old": "ClaimTakenOver", "ledger": [("fenced", 3)], "replay": "new"}


def test_a_retry_waits_for_djangos_commit_and_replays(run: Run, tmp_path: Path) -> None:
    seen = in_django(run, "retry_waits_and_replays", tmp_path)
    assert seen == {
        "same_connection": True,
        "waited": True,
        "answered_early": False,
        "result": "first",
        "retry": ("Existing", "completed"),
        "ledger": [("race", 5)],
    }


def test_misconfigurations_say_what_to_fix(run: Run, tmp_path: Path) -> None:
    seen = in_django(run, "errors", tmp_path)
    assert seen["elsewhere"][0] == "ForeignConnection"
    assert "does not reach" in seen["elsewhere"][1]
    assert seen["sqlite_database"][0] == "ForeignConnection"
    assert "'lite' is sqlite" in seen["sqlite_database"][1]
    assert seen["sqlite_store"][0] == "ForeignConnection"
    assert "'default' is postgresql" in seen["sqlite_store"][1]
    assert seen["other_prefix"][0] == "ConfigurationError"
    assert "RETRYSAFE_TABLE_PREFIX" in seen["other_prefix"][1]
    assert seen["inside_atomic"][0] == "ConfigurationError"
    assert "already inside transaction.atomic()" in seen["inside_atomic"][1]
    assert seen["migrate_mysql"][0] == "ConfigurationError"
    assert "SQLite or PostgreSQL" in seen["migrate_mysql"][1]
    assert seen["ledger"] == []

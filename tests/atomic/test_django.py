"""Atomic completion with Django (SPEC 13a): the record tables come from a Django migration,
the view writes with the ORM inside ``retrysafe.atomic.django.transaction()`` (or, async,
``atransaction()``), and a worker SIGKILLed before and after the commit still charges every key
exactly once: behind the WSGI middleware, and under uvicorn behind the ASGI middleware with a
sync view (run in asgiref's thread for the request) and with an async view.

Django runs in child processes only (its settings are once per process).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kit.atomic_db import NAMED_POINTS as POINTS
from kit.atomic_db import Worker, charge_until_answered, ledger_rows
from kit.atomic_django_child import django_worker

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("door", ["wsgi", "asgi", "asgi-async"])
def test_django_orm_charges_commit_with_the_record_exactly_once(tmp_path: Path, door: str) -> None:
    db = str(tmp_path / "django.db")  # empty: Django's migrate creates every table
    worker = Worker(db, door, True, target=django_worker)
    worker.start()
    answers = {}
    try:
        with sqlite3.connect(db) as raw:
            applied = raw.execute("SELECT app, name FROM django_migrations").fetchall()
        assert ("retrysafe", "0001_initial") in applied
        for n, pause in enumerate([None, *POINTS, *POINTS, None]):
            key = f"dj-{n}"
            answers[key] = charge_until_answered(worker, key, 100 + n, pause, None, db)
    finally:
        worker.stop()
    assert worker.kills == 2 * len(POINTS)
    rows = ledger_rows(db)
    assert {key: len(ids) for key, ids in rows.items()} == dict.fromkeys(answers, 1)
    assert all(answer == {"key": key, "row": rows[key][0]} for key, answer in answers.items())

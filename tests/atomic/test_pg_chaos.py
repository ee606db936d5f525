"""The PostgreSQL SIGKILL scenarios live in ``test_chaos.py``, parametrized over SQLite and
PostgreSQL. These names stay importable for modules written against this file."""

from __future__ import annotations

from kit.atomic_db import Worker, charge_killed_after, charge_killed_at, start, workers

__all__ = ["Worker", "charge_killed_after", "charge_killed_at", "start", "workers"]

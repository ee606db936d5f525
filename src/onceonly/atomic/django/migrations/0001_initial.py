"""onceonly's record tables in the application's database (SQLite: the store's own schema)."""

from __future__ import annotations

from typing import ClassVar

from django.db import migrations

from onceonly.stores.sqlite import PHASES, SCHEMA, TABLE

_STATEMENTS = [s.strip() for s in SCHEMA.split(";") if s.strip()]


class Migration(migrations.Migration):  # type: ignore[misc]  # django ships no types
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[migrations.RunSQL]] = [
        migrations.RunSQL(
            sql=_STATEMENTS,
            reverse_sql=[
                f"DROP TABLE IF EXISTS {PHASES}",
                f"DROP TABLE IF EXISTS {TABLE}_tokens",
                f"DROP TABLE IF EXISTS {TABLE}",
            ],
        )
    ]

"""retrysafe's record tables in the application's database: the store's own schema, SQLite or
PostgreSQL (``RETRYSAFE_SCHEMA`` / ``RETRYSAFE_TABLE_PREFIX`` settings), whichever is migrated."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import migrations

from retrysafe.atomic.django._tables import create_statements, drop_statements

__all__ = ["Migration"]


def _create(apps: Any, schema_editor: Any) -> None:
    for statement in create_statements(schema_editor.connection):
        schema_editor.execute(statement, params=None)


def _drop(apps: Any, schema_editor: Any) -> None:
    for statement in drop_statements(schema_editor.connection):
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):  # type: ignore[misc]  # django ships no types
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[migrations.RunPython]] = [migrations.RunPython(_create, _drop)]

"""The record tables retrysafe's Django migration creates, for the database being migrated.

SQLite: the :class:`~retrysafe.stores.sqlite.SQLiteStore` schema. PostgreSQL: the
:class:`~retrysafe.stores.postgres.PostgresStore` tables, in the schema and with the table
prefix named by the settings ``RETRYSAFE_SCHEMA`` (default: none, the connection's
``search_path``) and ``RETRYSAFE_TABLE_PREFIX`` (default ``"retrysafe_"``), which must be what
the store is opened with (:func:`store_tables` lets the atomic link check it).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from retrysafe.errors import ConfigurationError


def store_tables() -> tuple[str | None, str]:
    """``(schema, table_prefix)`` of the PostgreSQL record tables, from Django's settings."""
    schema = getattr(settings, "RETRYSAFE_SCHEMA", None)
    prefix = getattr(settings, "RETRYSAFE_TABLE_PREFIX", "retrysafe_")
    return (schema or None), str(prefix)


def create_statements(connection: Any) -> list[str]:
    """What creates the record tables on ``connection`` (a Django database connection)."""
    if connection.vendor == "sqlite":
        from retrysafe.stores.sqlite import SCHEMA

        return [s.strip() for s in SCHEMA.split(";") if s.strip()]
    statements = _postgres(connection)
    raw = connection.connection
    # The store takes the same lock while it creates the same tables (init_schema).
    lock = f"SELECT pg_advisory_xact_lock({int(statements.lock_id)})"
    return [lock, *(s.as_string(raw) for s in statements.create)]


def drop_statements(connection: Any) -> list[str]:
    """What drops the record tables on ``connection`` (the migration's reverse)."""
    if connection.vendor == "sqlite":
        from retrysafe.stores.sqlite import PHASES, TABLE

        return [
            f"DROP TABLE IF EXISTS {PHASES}",
            f"DROP TABLE IF EXISTS {TABLE}_tokens",
            f"DROP TABLE IF EXISTS {TABLE}",
        ]
    return [_postgres(connection).drop.as_string(connection.connection)]


def _postgres(connection: Any) -> Any:
    if connection.vendor != "postgresql":
        raise ConfigurationError(
            f"retrysafe's record tables live in a SQLite or PostgreSQL database, but database "
            f"{connection.alias!r} is {connection.vendor}: migrate the retrysafe app only on "
            "the database the idempotency store uses"
        )
    from retrysafe.stores.postgres import Statements

    connection.ensure_connection()
    return Statements(*store_tables())

"""A real PostgreSQL for the atomic tests: the store and a ledger table, unique per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe.stores.postgres import PostgresStore


@dataclass
class PgDb:
    """The store, its table prefix and the application's ledger table next to its tables."""

    url: str
    prefix: str
    store: PostgresStore

    @property
    def ledger_table(self) -> str:
        return f"{self.prefix}ledger"

    def ledger(self) -> list[tuple[str, int]]:
        """Committed ledger rows, read on a connection of their own (what a crash leaves)."""
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            query = f"SELECT key, cents FROM {self.ledger_table} ORDER BY id"
            return [(str(k), int(c)) for k, c in conn.execute(query).fetchall()]

    def open(self) -> PostgresStore:
        """Another handle on the same tables (another process, say)."""
        return PostgresStore(self.url, table_prefix=self.prefix, pool_min=0)


def make_db() -> Iterator[PgDb]:
    """Fixture body: skip (fail in CI) when PostgreSQL is down; drop everything afterwards."""
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    prefix = f"a{uuid.uuid4().hex[:12]}_"
    db = PgDb(POSTGRES_URL, prefix, PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0))
    db.store.init_schema()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {db.ledger_table} "
            "(id bigserial PRIMARY KEY, key text NOT NULL, cents integer NOT NULL)"
        )
    try:
        yield db
    finally:
        db.store.drop_schema()
        db.store.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {db.ledger_table}")


@pytest.fixture
def pg() -> Iterator[PgDb]:
    yield from make_db()

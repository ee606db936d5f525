"""What only the PostgreSQL store has: explicit schema, purge through indexes, completion in
the caller's transaction (SPEC 13a)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from kit.store_servers import POSTGRES_URL, require, shared_down
from retrysafe._records import Claimed, Existing, State, StoredResponse
from retrysafe.errors import StoreUnavailable
from retrysafe.stores.postgres import PostgresStore

OK = StoredResponse(200, (), b"ok")


@pytest.fixture
def prefix() -> Iterator[str]:
    require("PostgreSQL", shared_down(POSTGRES_URL))
    prefix = f"x{uuid.uuid4().hex[:10]}_"
    yield prefix
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {prefix}records")
        conn.execute(f"DROP SCHEMA IF EXISTS s{prefix} CASCADE")


def test_init_schema_is_idempotent_and_safe_concurrently(prefix):
    stores = [PostgresStore(POSTGRES_URL, table_prefix=prefix, init_schema=False) for _ in range(4)]
    errors: list[BaseException] = []

    def init(store: PostgresStore) -> None:
        try:
            store.init_schema()
            store.init_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=init, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert isinstance(stores[0].claim("k", "fp", 60), Claimed)
    for store in stores:
        store.close()


def test_without_lazy_init_a_missing_table_is_a_clear_store_error(prefix):
    store = PostgresStore(f"{POSTGRES_URL}?table_prefix={prefix}&init_schema=false")
    with pytest.raises(StoreUnavailable, match="does not exist; create it"):
        store.claim("k", "fp", 60)
    store.init_schema()
    assert isinstance(store.claim("k", "fp", 60), Claimed)
    store.close()


def test_schema_option_puts_the_table_in_that_schema(prefix):
    store = PostgresStore(POSTGRES_URL, schema=f"s{prefix}", table_prefix=prefix)
    assert isinstance(store.claim("k", "fp", 60), Claimed)
    with psycopg.connect(POSTGRES_URL) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = %s",
            (f"s{prefix}", f"{prefix}records"),
        ).fetchone()
    assert found == (1,)
    store.close()


def test_purge_strips_bodies_past_ttl_and_deletes_past_retention(prefix):
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix)
    for i, (ttl, retention) in enumerate([(0, 0), (0, 600), (600, 600)]):
        claimed = store.claim(f"k{i}", "fp", 60)
        assert isinstance(claimed, Claimed)
        assert store.complete(f"k{i}", claimed.token, OK, ttl, retention)
    in_flight = store.claim("busy", "fp", 60)
    assert isinstance(in_flight, Claimed)
    assert store.purge() == 1  # k0 only: past its retention
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = dict(conn.execute(f"SELECT id, body IS NOT NULL FROM {prefix}records").fetchall())
    assert rows == {"k1": False, "k2": True, "busy": False}  # k1: a tombstone, no body
    assert store.get("k0") is None
    tomb = store.get("k1")
    assert tomb is not None
    assert tomb.state is State.TOMBSTONE
    assert isinstance(store.claim("k2", "fp", 60), Existing)
    store.close()


def test_purge_uses_the_indexes_not_a_table_scan(prefix):
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix)
    store.init_schema()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {prefix}records (id, fingerprint, state, token, lease_until, "
            "expires_at, retain_until, created_at, body) "
            "SELECT 'r' || g, 'fp', 'completed', g, 0, 9e15, 9e15, 0, 'x' "
            "FROM generate_series(1, 20000) g"
        )
        conn.execute(f"ANALYZE {prefix}records")
        for statement in (store.sql.purge_bodies, store.sql.purge_rows):
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    psycopg.sql.SQL("EXPLAIN ") + statement, {"limit": 1000}
                ).fetchall()
            )
            assert "Index" in plan, plan
            assert f"Seq Scan on {prefix}records" not in plan, plan
    store.close()


def test_complete_in_commits_with_the_callers_writes(prefix):
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix)
    first = store.claim("k", "fp", 60)
    assert isinstance(first, Claimed)
    with psycopg.connect(POSTGRES_URL) as conn:  # a transaction of the application's own
        assert store.complete_in(conn, "k", first.token, OK, 600, 600)
        conn.rollback()  # e.g. the handler's own write failed: the completion goes too
    record = store.get("k")
    assert record is not None
    assert record.state is State.IN_FLIGHT
    with psycopg.connect(POSTGRES_URL) as conn:
        assert store.complete_in(conn, "k", first.token, OK, 600, 600)
        assert not store.complete_in(conn, "k", first.token + 1, OK, 600, 600)  # fenced
    done = store.get("k")  # the connection block committed
    assert done is not None
    assert done.response == OK
    store.close()

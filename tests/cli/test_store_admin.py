"""`retrysafe store init`, `retrysafe keys purge`, `retrysafe keys stats` on real stores.

SQLite in a temp dir, the shared PostgreSQL (a table prefix of its own per test) and the
shared Redis (a key prefix of its own per test); real clocks, so the short TTLs really lapse.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kit.stores import POSTGRES_URL, REDIS_URL, require_service, server_down
from retrysafe._records import Claimed, StoredResponse
from retrysafe.cli._commands import cli
from retrysafe.stores._base import DualStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.url import open_store

RESPONSE = StoredResponse(201, (("content-type", "application/json"),), b'{"id":1}')
# Long enough that a loaded machine never sees these lapse mid-test.
LONG = 600.0
# Short TTLs the tests wait out on the store's real clock.
SHORT = 0.05


@dataclass
class Target:
    kind: str
    url: str
    store: DualStore


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@contextlib.contextmanager
def _target(kind: str, tmp_path: Path) -> Iterator[Target]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'admin.db'}"
    elif kind == "postgres":
        if why := server_down(POSTGRES_URL):
            require_service("PostgreSQL", why)
        url = f"{POSTGRES_URL}?table_prefix=t{uuid.uuid4().hex[:12]}_"
    else:
        if why := server_down(REDIS_URL):
            require_service("Redis", why)
        url = f"{REDIS_URL}?prefix=t{uuid.uuid4().hex[:12]}:"
    store = open_store(url)
    try:
        yield Target(kind, url, store)
    finally:
        if kind == "postgres":
            store.drop_schema()  # type: ignore[attr-defined]
        elif kind == "redis":
            store.drop_keys()  # type: ignore[attr-defined]
        store.close()


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with _target(request.param, tmp_path) as t:
        yield t


@pytest.fixture(params=["sqlite", "postgres"])
def purgeable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with _target(request.param, tmp_path) as t:
        yield t


def put(
    store: DualStore, id: str, response: StoredResponse | None, ttl: float, keep: float
) -> None:
    """A record ``id``: in flight when ``response`` is None, else completed with it."""
    claimed = store.claim(id, f"fp-{id}", LONG)
    assert isinstance(claimed, Claimed)
    if response is not None:
        assert store.complete(id, claimed.token, response, ttl, keep)


def test_stats_counts_records_per_state(target: Target) -> None:
    store = target.store
    put(store, "lapsing", RESPONSE, SHORT, LONG)  # a tombstone once its TTL lapses
    put(store, "flying", None, 0, 0)
    put(store, "done-1", RESPONSE, LONG, LONG)
    put(store, "done-2", RESPONSE, LONG, LONG)
    put(store, "unkept", StoredResponse(200, (), b"", replayable=False), LONG, LONG)
    time.sleep(SHORT * 4)

    result = invoke("keys", "stats", "--store", target.url, "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "in_flight": 1,
        "completed": 2,
        "unreplayable": 1,
        "tombstone": 1,
        "total": 5,
        "complete": True,
    }


def test_stats_prints_a_table(target: Target) -> None:
    put(target.store, "done", RESPONSE, LONG, LONG)

    result = invoke("keys", "stats", "--store", target.url)

    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["completed", "1"] in lines
    assert ["in_flight", "0"] in lines
    assert ["total", "1"] in lines


def test_redis_stats_stop_at_the_scan_bound(tmp_path: Path) -> None:
    with _target("redis", tmp_path) as t:
        for i in range(5):
            put(t.store, f"k{i}", RESPONSE, LONG, LONG)

        bounded = t.store.stats(limit=3)  # type: ignore[attr-defined]
        full = t.store.stats()  # type: ignore[attr-defined]

    assert (bounded.total, bounded.complete) == (3, False)
    assert (full.total, full.complete) == (5, True)


def test_memory_stats_apply_lapsed_ttls() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    put(store, "a", RESPONSE, 10, 100)
    put(store, "b", RESPONSE, 1000, 100)
    now[0] += 50  # a: tombstone; b: still completed

    assert store.stats().counts == {
        "in_flight": 0,
        "completed": 1,
        "unreplayable": 0,
        "tombstone": 1,
    }
    now[0] += 100  # a: past retention, gone
    assert store.stats().total == 1


def _rows(target: Target) -> int:
    """Rows physically in the table, whatever their times (what a purge removes)."""
    if target.kind == "sqlite":
        path = target.url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("SELECT count(*) FROM retrysafe_records").fetchone()[0])
    import psycopg

    table = target.store.sql.table_name  # type: ignore[attr-defined]
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        assert row is not None
        return int(row[0])


def test_purge_deletes_records_past_retention_in_batches(purgeable: Target) -> None:
    store = purgeable.store
    for i in range(3):
        put(store, f"old{i}", RESPONSE, SHORT, SHORT)
    put(store, "young", RESPONSE, LONG, LONG)
    put(store, "flying", None, 0, 0)
    time.sleep(SHORT * 6)
    assert _rows(purgeable) == 5

    # --limit 2: three expired rows take two batches (2, then 1 < limit: caught up).
    result = invoke("keys", "purge", "--store", purgeable.url, "--limit", "2")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "purged: 3 expired record(s) deleted"
    assert _rows(purgeable) == 2
    assert store.get("young") is not None
    assert store.get("flying") is not None
    again = invoke("keys", "purge", "--store", purgeable.url)
    assert again.output.strip() == "purged: 0 expired record(s) deleted"


def test_purge_on_redis_says_keys_expire_by_themselves(tmp_path: Path) -> None:
    with _target("redis", tmp_path) as t:
        result = invoke("keys", "purge", "--store", t.url)

    assert result.exit_code == 0, result.output
    assert "expires records by itself: nothing to purge" in result.output


def test_purge_rejects_a_zero_limit(tmp_path: Path) -> None:
    result = invoke("keys", "purge", "--store", f"sqlite:///{tmp_path / 'x.db'}", "--limit", "0")

    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.output


def _table_exists(table: str) -> bool:
    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{table}"',)).fetchone()
        return row is not None and row[0] is not None


def test_store_init_creates_the_postgres_table_idempotently() -> None:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    url = f"{POSTGRES_URL}?table_prefix={prefix}&init_schema=false"
    assert not _table_exists(f"{prefix}records")
    try:
        first = invoke("store", "init", url)
        second = invoke("store", "init", url)

        assert (first.exit_code, second.exit_code) == (0, 0), first.output + second.output
        assert first.output.strip() == "Postgres store: schema ready"
        assert _table_exists(f"{prefix}records")
        # The lazy creation is off in this URL: the store works only because init ran.
        store = open_store(url)
        try:
            put(store, "k", RESPONSE, LONG, LONG)
            assert store.get("k") is not None
        finally:
            store.drop_schema()  # type: ignore[attr-defined]
            store.close()
    finally:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{prefix}records"')


@pytest.mark.parametrize("kind", ["sqlite", "redis", "memory"])
def test_store_init_elsewhere_has_nothing_to_create(kind: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        url = "memory://" if kind == "memory" else stack.enter_context(_target(kind, tmp_path)).url
        result = invoke("store", "init", url)

    assert result.exit_code == 0, result.output
    assert "there is no schema to create, nothing to do" in result.output


def test_store_init_with_a_bad_url_is_a_clear_error() -> None:
    result = invoke("store", "init", "nosuch://x")

    assert result.exit_code == 2
    assert "Error: unknown store URL scheme" in result.output


def test_admin_commands_see_through_the_local_replay_cache(tmp_path: Path) -> None:
    # A URL with ?local_cache wraps the store (stores/cached.py): the commands still reach
    # the wrapped store's purge/stats, and messages name the wrapped store's kind.
    on_file = f"sqlite:///{tmp_path / 'cached.db'}?local_cache=10"
    assert invoke("store", "init", on_file).exit_code == 0  # the commands create no file
    purged = invoke("keys", "purge", "--store", on_file)
    assert purged.exit_code == 0, purged.output
    assert purged.output.strip() == "purged: 0 expired record(s) deleted"
    stats = invoke("keys", "stats", "--store", on_file, "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["total"] == 0
    in_memory = invoke("keys", "purge", "--store", "memory://?local_cache=10")
    assert in_memory.exit_code == 0, in_memory.output
    assert "Memory store expires records by itself" in in_memory.output

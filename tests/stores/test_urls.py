"""Store URLs: ``open_store(url)`` picks the store by scheme and reads its options from the
query string; a bad URL or option is a ConfigurationError that says what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.store_claims import FP, claimed
from retrysafe import open_store
from retrysafe.errors import ConfigurationError
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.postgres import PostgresStore
from retrysafe.stores.redis import RedisStore
from retrysafe.stores.sqlite import SQLiteStore


def test_open_store_memory_url() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert store.url == "memory://"


def test_open_store_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub-rel.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.url == "sqlite:///sub-rel.db"
        assert store.path == "sub-rel.db"
        assert claimed(store.claim("k", FP, 60)).token > 0
        assert (tmp_path / "sub-rel.db").is_file()
    finally:
        store.close()


def test_open_store_sqlite_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    store = open_store(f"sqlite:///{path}")  # an absolute path gives the four-slash form
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == str(path)
        claimed(store.claim("k", FP, 60))
        assert path.is_file()
    finally:
        store.close()


def test_open_store_reads_the_environment_when_no_url_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRYSAFE_STORE_URL", "memory://from-env")
    store = open_store()
    assert isinstance(store, MemoryStore)
    assert store.url == "memory://from-env"


@pytest.mark.parametrize("url", ["mysql://localhost/db", "retrysafe.db", "sqlite3:///x.db"])
def test_open_store_rejects_an_unknown_scheme_naming_the_known_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    message = str(info.value)
    assert url in message
    assert "memory://" in message
    assert "sqlite://" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:", "sqlite:///", "sqlite://host/x.db", "sqlite:x.db"]
)
def test_open_store_rejects_a_malformed_sqlite_url_with_the_right_forms(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    message = str(info.value)
    assert repr(url) in message
    assert "sqlite:///relative/path.db" in message
    assert "sqlite:////absolute/path.db" in message


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none", False),
        ("redis+cluster://127.0.0.1:7000", True),
        ("rediss+cluster://127.0.0.1:7000", True),
    ],
)
def test_redis_schemes(url, cluster):
    store = open_store(url)
    assert isinstance(store, RedisStore)
    assert store.cluster is cluster
    assert store.url == url
    store.close()


def test_redis_options_come_from_the_query_string():
    store = open_store("redis://127.0.0.1:6379/0?prefix=app:&pool_size=7&timeout=0.5")
    assert isinstance(store, RedisStore)
    assert store.prefix == "app:"
    pool = store.client.connection_pool
    assert pool.max_connections == 7
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    store.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_schemes_and_options(scheme):
    url = f"{scheme}://u@127.0.0.1:5432/db?table_prefix=app_&schema=s&pool_size=3&sslmode=prefer"
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    assert store.sql.table_name == "app_records"
    assert store._pool.max_size == 3
    assert "sslmode=prefer" in store._conninfo  # libpq's options pass through
    assert "table_prefix" not in store._conninfo
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?pool_size=many",
        "redis://127.0.0.1:6379/0?pool_size=0",
        "postgresql://127.0.0.1/db?timeout=soon",
        "postgresql://127.0.0.1/db?pool_min=5&pool_size=2",
        "postgresql://127.0.0.1/db?init_schema=perhaps",
    ],
)
def test_bad_options_are_configuration_errors(url):
    with pytest.raises(ConfigurationError):
        open_store(url)

"""Store URLs (schemes, options) and answers in bounded time when no server listens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from kit.store_servers import free_port
from kit.wakes import HANG, NEVER
from retrysafe import open_store
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.stores.postgres import PostgresStore
from retrysafe.stores.redis import RedisStore


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


def _dead_stores() -> list[object]:
    port = free_port()  # nothing listens there
    return [
        RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.5, connect_timeout=0.5),
        PostgresStore(
            f"postgresql://u@127.0.0.1:{port}/db", timeout=0.5, pool_timeout=0.5, listen=False
        ),
    ]


def _raised_in_time(call: Callable[[], object]) -> BaseException | None:
    """What ``call()`` raised, run in a thread; a call still running after HANG is a hang."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).exception(timeout=HANG)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize("index", [0, 1], ids=["redis", "postgres"])
def test_no_server_answers_store_unavailable_instead_of_hanging(index):
    store = _dead_stores()[index]
    caught = _raised_in_time(lambda: store.claim("k", "fp", 60))  # type: ignore[attr-defined]
    assert isinstance(caught, StoreUnavailable), caught
    assert caught.__cause__ is not None  # the backend error stays visible
    store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("index", [0, 1], ids=["redis", "postgres"])
async def test_no_server_answers_store_unavailable_instead_of_hanging_async(index):
    store = _dead_stores()[index]
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.aclaim("k", "fp", 60), HANG)  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable):  # the timeout would be NEVER: only the error ends it
        await asyncio.wait_for(store.awatch("k", NEVER), HANG)  # type: ignore[attr-defined]
    await store.aclose()  # type: ignore[attr-defined]

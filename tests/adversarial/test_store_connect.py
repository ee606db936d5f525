"""A PostgreSQL store that cannot connect says why, once, in the error the caller gets.

Before: ``PoolTimeout: couldn't get a connection after 2.00 sec`` and, beside it, one
``psycopg.pool`` warning per connection attempt carrying the real cause. Driven against the
shared server on 127.0.0.1:5432 (a database that does not exist, a role that does not exist)
and a loopback port nothing listens on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import pytest
from click.testing import CliRunner

from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe.cli._commands import cli
from retrysafe.errors import StoreUnavailable
from retrysafe.stores.postgres import PostgresStore


@pytest.fixture(autouse=True)
def _server() -> None:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _missing_db() -> str:
    return f"postgresql://postgres@127.0.0.1:5432/nosuch_{uuid.uuid4().hex[:8]}"


CASES = [
    pytest.param(_missing_db, 'database "nosuch_', id="missing-database"),
    pytest.param(
        lambda: "postgresql://nosuchrole@127.0.0.1:5432/test", 'role "nosuchrole"', id="bad-role"
    ),
    pytest.param(
        lambda: f"postgresql://postgres@127.0.0.1:{_closed_port()}/test",
        "Connection refused",
        id="refused",
    ),
]


@pytest.mark.parametrize(("url", "cause"), CASES)
def test_sync_error_names_the_cause_without_pool_noise(
    url: object, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresStore(url() + "?timeout=1&listen=false")  # type: ignore[operator]
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.get("0" * 64)
    finally:
        store.close()
    message = str(info.value)
    assert cause in message, message
    assert "PoolTimeout" not in message
    assert "\n" not in message
    noise = [r for r in caplog.records if r.name == "psycopg.pool" and r.levelno >= logging.WARNING]
    assert noise == [], [r.getMessage() for r in noise]


@pytest.mark.parametrize(("url", "cause"), CASES)
def test_async_error_names_the_cause(url: object, cause: str) -> None:
    async def go() -> str:
        store = PostgresStore(url() + "?timeout=1&listen=false")  # type: ignore[operator]
        try:
            with pytest.raises(StoreUnavailable) as info:
                await store.aget("0" * 64)
        finally:
            await store.aclose()
            store.close()
        return str(info.value)

    message = asyncio.run(go())
    assert cause in message, message
    assert "\n" not in message


def test_cli_prints_one_line_naming_the_missing_database() -> None:
    result = CliRunner().invoke(cli, ["keys", "stats", "--store", _missing_db()])
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert 'database "nosuch_' in lines[0]
    assert "does not exist" in lines[0]
    assert "Traceback" not in result.output

"""A store or DLQ URL's password never reaches the terminal.

Every command that names its store (``keys show``/``delete`` when the key is unknown,
``dlq list``'s title, error messages for a bad URL or an unusable store) prints it with the
password masked. Driven through the real ``retrysafe`` command with CliRunner, on the shared
PostgreSQL (trust auth) and Redis (its default user has no password): both accept any
password, so the commands really run.
"""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner, Result

from kit.stores import POSTGRES_URL, REDIS_URL, require_service, server_down
from retrysafe.cli._commands import cli
from retrysafe.stores.postgres import PostgresStore

SECRET = "s3cret-pw-7f3a"


def with_password(url: str, user: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{SECRET}@{rest.rpartition('@')[2]}"


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert SECRET not in result.output
    assert SECRET not in str(result.exception or "")
    return result


@pytest.fixture
def pg_url() -> str:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    return with_password(POSTGRES_URL, "postgres")


def test_keys_show_and_delete_of_an_unknown_key(pg_url: str) -> None:
    url = f"{pg_url}?table_prefix=t{uuid.uuid4().hex[:12]}_"
    try:
        shown = run("keys", "show", "no-such-key", "--shared", "--store", url)
        assert shown.exit_code == 1
        assert "no live record for this key in postgresql://postgres:***@" in shown.output
        deleted = run("keys", "delete", "no-such-key", "--shared", "--store", url)
        assert deleted.exit_code == 1
        assert "no record for this key in postgresql://postgres:***@" in deleted.output
    finally:
        store = PostgresStore(url)
        store.drop_schema()
        store.close()


def test_dlq_list_title(pg_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    url = f"{pg_url}?table_prefix={prefix}"
    try:
        listed = run("dlq", "list", "--store", url)
        assert listed.exit_code == 0, listed.output
        assert "postgresql://postgres:***@" in listed.output
    finally:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {prefix}dlq")


def test_redis_with_a_password() -> None:
    if why := server_down(REDIS_URL):
        require_service("Redis", why)
    url = f"{with_password(REDIS_URL, 'default')}?prefix=t{uuid.uuid4().hex[:12]}:"
    shown = run("keys", "show", "k", "--shared", "--store", url)
    assert shown.exit_code == 1
    assert "no live record for this key in redis://default:***@" in shown.output
    listed = run("dlq", "list", "--store", url)
    assert listed.exit_code == 0, listed.output
    assert "redis://default:***@" in listed.output


@pytest.mark.parametrize(
    "args",
    [
        [
            "keys",
            "show",
            "k",
            "--shared",
            "--store",
            f"postgresql://u:{SECRET}@127.0.0.1/app?shema=x",
        ],
        ["keys", "stats", "--store", f"redis://u:{SECRET}@127.0.0.1:6379/abc"],
        ["keys", "delete", "k", "--shared", "--store", f"mysql://u:{SECRET}@127.0.0.1/app"],
        ["store", "init", f"postgres://u:{SECRET}@127.0.0.1/app?table_prefx=x"],
        ["dlq", "list", "--store", f"redis://u:{SECRET}@127.0.0.1:6379/0?prefx=x"],
        ["dlq", "purge", "--store", f"postgresql://u:{SECRET}@127.0.0.1/app?shema=x"],
    ],
)
def test_a_bad_url_is_one_line_without_the_password(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2  # a bad URL (README, exit codes)
    assert result.output.startswith("Error: ")
    assert "u:***@127.0.0.1" in result.output

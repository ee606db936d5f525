"""Store and DLQ URLs are checked when opened: a misspelt option or a bad Redis database is a
ConfigurationError that names it, lists the valid options and suggests the closest (instead of
a driver traceback on first use, or an option silently ignored). Messages never carry a
password. No service is needed: every URL here is refused before anything connects.
"""

from __future__ import annotations

import pytest

from retrysafe import open_store
from retrysafe.client.dlq import DeadLetterQueue
from retrysafe.errors import ConfigurationError
from retrysafe.stores.redis import RedisStore
from retrysafe.stores.url import redacted_url

SECRET = "s3cret-pw"


def refused(url: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert SECRET not in message
    return message


@pytest.mark.parametrize(
    ("url", "typo", "meant"),
    [
        ("memory://?prefx=a:", "prefx", None),
        ("memory://?local_cach=10", "local_cach", "local_cache"),
        (
            "sqlite:///app.db?local_cache_byte=10&local_cache=5",
            "local_cache_byte",
            "local_cache_bytes",
        ),
        (f"redis://u:{SECRET}@127.0.0.1:6379/0?prefx=billing:", "prefx", "prefix"),
        (f"redis://u:{SECRET}@127.0.0.1:6379/0?local_cach=10", "local_cach", "local_cache"),
        ("rediss://127.0.0.1:6380/0?ssl_certfle=/c.pem", "ssl_certfle", "ssl_certfile"),
        (f"postgresql://u:{SECRET}@127.0.0.1/app?shema=billing", "shema", "schema"),
        (f"postgres://u:{SECRET}@127.0.0.1/app?table_prefx=x_", "table_prefx", "table_prefix"),
        ("postgresql://127.0.0.1/app?sslmod=require", "sslmod", "sslmode"),
    ],
)
def test_an_unknown_option_is_named_with_the_valid_ones(
    url: str, typo: str, meant: str | None
) -> None:
    message = refused(url)
    assert f"unknown option {typo!r}" in message
    assert "Valid options: local_cache, local_cache_bytes" in message  # open_store's own, first
    if meant is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean {meant!r}?" in message


def test_each_store_lists_its_own_options() -> None:
    assert "prefix, pool_size, pool_timeout, timeout, connect_timeout, listen" in refused(
        "redis://127.0.0.1/0?x=1"
    )
    pg = refused("postgresql://127.0.0.1/app?x=1")
    assert "schema, table_prefix, pool_size" in pg
    assert "any libpq connection parameter" in pg
    assert "takes no driver options" in refused("sqlite:///app.db?x=1")


def test_tls_options_on_a_plain_redis_url_say_rediss() -> None:
    message = refused("redis://127.0.0.1/0?ssl_cert_reqs=none")
    assert "unknown option 'ssl_cert_reqs'" in message
    assert "need rediss://" in message


def test_driver_options_still_pass_through() -> None:
    store = open_store("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&client_name=app&prefix=a:")
    store.close()
    store = open_store("redis://127.0.0.1:6379/?db=3&health_check_interval=10")
    store.close()


@pytest.mark.parametrize(
    ("url", "bad"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/abc", "abc"),
        ("redis://127.0.0.1:6379/0/1", "0/1"),
        ("redis://127.0.0.1:6379/?db=two", "two"),
        ("rediss+cluster://127.0.0.1:7000/x", "x"),
    ],
)
def test_a_bad_redis_database_is_refused(url: str, bad: str) -> None:
    message = refused(url)
    assert f"bad Redis database {bad!r}" in message
    assert "database number" in message


def test_the_store_classes_check_too() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option 'prefx'.*did you mean 'prefix'"):
        RedisStore("redis://127.0.0.1/0?prefx=a:")


@pytest.mark.parametrize(
    ("url", "typo", "meant"),
    [
        (f"redis://u:{SECRET}@127.0.0.1:6379/0?prefx=dlq:", "prefx", "prefix"),
        (f"postgresql://u:{SECRET}@127.0.0.1/app?shema=billing", "shema", "schema"),
        ("sqlite:///dlq.db?prefix=a", "prefix", None),
    ],
)
def test_dlq_urls_are_checked_the_same_way(url: str, typo: str, meant: str | None) -> None:
    with pytest.raises(ConfigurationError) as caught:
        DeadLetterQueue(url)
    message = str(caught.value)
    assert f"unknown option {typo!r}" in message
    assert SECRET not in message
    if meant:
        assert f"did you mean {meant!r}?" in message


def test_a_bad_redis_database_in_a_dlq_url() -> None:
    with pytest.raises(ConfigurationError, match="bad Redis database 'abc'"):
        DeadLetterQueue("redis://127.0.0.1:6379/abc")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app:s3cret@db:5432/app?schema=x",
            "postgresql://app:***@db:5432/app?schema=x",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:p@ss@cache/0", "rediss://default:***@cache/0"),
        (
            "postgresql://db/app?password=s3cret&sslpassword=s3cret",
            "postgresql://db/app?password=***&sslpassword=***",
        ),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("sqlite:////var/lib/app.db", "sqlite:////var/lib/app.db"),
        ("dlq.db", "dlq.db"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_an_unknown_scheme_does_not_echo_the_password() -> None:
    message = refused(f"mysql://app:{SECRET}@db/app")
    assert "mysql://app:***@db/app" in message


def test_a_bad_driver_value_does_not_echo_a_password_with_an_at_sign() -> None:
    message = refused(f"redis://u:x@{SECRET}@127.0.0.1:6379/0?socket_timeout=soon")
    assert "socket_timeout" in message
    assert "redis://u:***@127.0.0.1:6379/0" in message

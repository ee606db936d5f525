"""The async face's lean Redis channel (``stores/_redis_wire.py``) against real servers.

One pipelined connection per event loop: concurrent coroutines must each get their own
reply, a stalled or dead server must answer in bounded time and never hand a late reply to a
later call, and the URL's password, database, client name and TLS options must be honoured.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kit.store_servers import (
    REDIS_URL,
    RedisServer,
    free_port,
    redis_available,
    require,
    shared_down,
)
from kit.wakes import HANG
from retrysafe._records import Claimed, Existing, StoredResponse
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.stores._redis_wire import Endpoint, Wire
from retrysafe.stores.redis import RedisStore

OK = StoredResponse(201, (("content-type", "text/plain"),), b"ok")


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    require("Redis", shared_down(REDIS_URL))
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _drop(store: RedisStore) -> None:
    store.drop_keys()
    store.close()


def _clients_named(raw: redis.Redis, name: str) -> int:
    return sum(1 for client in raw.client_list() if client.get("name") == name)


async def test_200_concurrent_operations_share_one_connection_and_get_their_own_replies(raw):
    name = f"wire{uuid.uuid4().hex[:8]}"
    store = RedisStore(f"{REDIS_URL}?client_name={name}", prefix=f"{name}:")
    try:
        ids = [f"k{i}" for i in range(200)]
        claimed = await asyncio.gather(*(store.aclaim(id, f"fp-{id}", 60) for id in ids))
        assert all(isinstance(c, Claimed) for c in claimed)
        assert _clients_named(raw, name) == 1  # one connection for the whole loop
        done = await asyncio.gather(
            *(
                store.acomplete(id, c.token, StoredResponse(201, (), id.encode()), 60, 60)
                for id, c in zip(ids, claimed, strict=True)
                if isinstance(c, Claimed)
            )
        )
        assert all(done)
        records = await asyncio.gather(*(store.aget(id) for id in reversed(ids)))
        for id, record in zip(reversed(ids), records, strict=True):
            assert record is not None
            assert record.fingerprint == f"fp-{id}"
            assert record.response is not None
            assert record.response.body == id.encode()
    finally:
        await store.aclose()
        _drop(store)


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(raw):
    wire = Wire(Endpoint.from_url(REDIS_URL), 2.0, 1.0, "test")
    try:
        tasks = [asyncio.ensure_future(wire.call(b"ECHO", f"v{i}")) for i in range(50)]
        await asyncio.sleep(0)  # every request is written
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks[1::2])
        assert results == [f"v{i}".encode() for i in range(1, 50, 2)]
        assert await wire.call(b"ECHO", b"after") == b"after"
    finally:
        await wire.aclose()


async def test_a_stalled_server_fails_every_waiting_call_in_time_then_a_fresh_connection(
    plain_server: RedisServer,
):
    wire = Wire(Endpoint.from_url(plain_server.url), 0.3, 1.0, "test")
    try:
        before = await wire.call(b"CLIENT", b"ID")
        with plain_server.frozen():  # stalled until the block ends: only timeouts can answer
            calls = [wire.call(b"ECHO", f"late{i}") for i in range(20)]
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG)
            assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
        # The server now answers the late calls on the dropped connection: a new one answers
        # for itself.
        assert await wire.call(b"ECHO", b"fresh") == b"fresh"
        assert await wire.call(b"CLIENT", b"ID") != before
    finally:
        await wire.aclose()


async def test_scripts_flushed_on_the_server_are_sent_again_in_full(raw):
    store = RedisStore(REDIS_URL, prefix=f"w{uuid.uuid4().hex[:8]}:")
    try:
        assert isinstance(await store.aclaim("k", "fp", 30), Claimed)
        raw.script_flush()
        assert isinstance(await store.aclaim("k", "fp", 30), Existing)  # NOSCRIPT -> EVAL
        assert isinstance(await store.aclaim("k", "fp", 30), Existing)  # loaded again
    finally:
        await store.aclose()
        _drop(store)


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[RedisServer]:
    require("redis-server", redis_available())
    server = RedisServer(tmp_path / "plain").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    require("redis-server", redis_available())
    server = RedisServer(tmp_path / "redis", free_port(), "--requirepass", "s3cret").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize("userinfo", [":s3cret", "default:s3cret"])
async def test_password_and_database_from_the_url_are_honoured(own_server, userinfo):
    url = f"redis://{userinfo}@127.0.0.1:{own_server.port}/3"
    store = RedisStore(url, prefix="auth:", listen=False)
    try:
        claimed = await store.aclaim("k", "fp", 60)
        assert isinstance(claimed, Claimed)
        assert await store.acomplete("k", claimed.token, OK, 60, 60)
        admin = redis.Redis(port=own_server.port, password="s3cret", db=3)
        assert admin.get("auth:v2{k}").endswith(b",fp")  # written to database 3 ...
        assert redis.Redis(port=own_server.port, password="s3cret").dbsize() == 0  # ... only
        admin.close()
    finally:
        await store.aclose()
    wrong = RedisStore(f"redis://:nope@127.0.0.1:{own_server.port}/3", listen=False)
    with pytest.raises(StoreUnavailable, match=r"WRONGPASS|invalid"):
        await wrong.aclaim("k", "fp", 60)
    await wrong.aclose()


async def test_a_killed_server_answers_503_until_it_is_back_then_the_same_store_serves(
    tmp_path: Path,
):
    require("redis-server", redis_available())
    server = RedisServer(tmp_path / "redis", free_port()).start()
    store = RedisStore(server.url, prefix="k:", timeout=0.5, connect_timeout=0.5, listen=False)
    try:
        first = await store.aclaim("a", "fp", 60)
        assert isinstance(first, Claimed)
        server.kill()
        for id in ["a", "b"]:
            with pytest.raises(StoreUnavailable):  # an error, and no hang
                await asyncio.wait_for(store.aclaim(id, "fp", 60), HANG)
        server.start()  # an empty server: no data, no scripts
        again = await store.aclaim("a", "fp", 60)
        assert isinstance(again, Claimed)
        assert await store.acomplete("a", again.token, OK, 60, 60)
        replay = await store.aclaim("a", "fp", 60)
        assert isinstance(replay, Existing)
        assert replay.record.response == OK
    finally:
        await store.aclose()
        server.kill()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", *request.split(), "-addext", "subjectAltName=IP:127.0.0.1", *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_tls_with_the_url_s_certificate_options(tmp_path: Path):
    require("redis-server", redis_available())
    require("openssl", None if shutil.which("openssl") else "openssl not on PATH")
    cert, key = _self_signed(tmp_path)
    port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        port,
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
    ).start()
    trusted = RedisStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", listen=False)
    untrusted = RedisStore(f"rediss://127.0.0.1:{port}/0", listen=False)  # system CAs only
    try:
        claimed = await trusted.aclaim("t", "fp", 60)
        assert isinstance(claimed, Claimed)
        assert isinstance(await trusted.aclaim("t", "fp", 60), Existing)
        with pytest.raises(StoreUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await untrusted.aclaim("t", "fp", 60)
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        server.kill()


@pytest.mark.parametrize(
    "query", ["ssl_ca_certs=/nonexistent/ca.pem", "ssl_cert_reqs=sometimes"], ids=["file", "reqs"]
)
def test_bad_tls_options_are_configuration_errors(query):
    with pytest.raises(ConfigurationError, match="ssl"):
        RedisStore(f"rediss://127.0.0.1:6380/0?{query}")

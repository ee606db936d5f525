"""Dead-letter queue URLs for every backend, each private to one test (fixture ``dlq_url``).

SQLite: a file under ``tmp_path``. Redis: the shared server with a key prefix of its own.
PostgreSQL: the shared ``test`` database with a table prefix of its own. The real servers are
used (never mocks); when one is down, ``require_service`` skips (fails in CI). ``dump``
returns every byte the backend stored, for the redaction test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kit.stores import POSTGRES_URL, REDIS_URL, require_service, server_down

BACKENDS = ["sqlite", "redis", "postgres"]


@dataclass
class DLQUrl:
    backend: str
    url: str
    dump: Callable[[], bytes]


def _sqlite(tmp_path: Path) -> Iterator[DLQUrl]:
    path = tmp_path / "dlq.db"

    def dump() -> bytes:
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    yield DLQUrl("sqlite", f"sqlite:///{path}", dump)


def _redis(tmp_path: Path) -> Iterator[DLQUrl]:
    if why := server_down(REDIS_URL):
        require_service("Redis", why)
    import redis

    prefix = f"t{uuid.uuid4().hex[:12]}:dlq:"
    client = redis.Redis.from_url(REDIS_URL)

    def dump() -> bytes:
        out = b""
        for key in client.scan_iter(match=f"{prefix}*"):
            kind = client.type(key)
            if kind == b"hash":
                out += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"zset":
                out += b"".join(client.zrange(key, 0, -1))
            else:
                out += bytes(client.get(key) or b"")
        return out

    sep = "&" if "?" in REDIS_URL else "?"
    try:
        yield DLQUrl("redis", f"{REDIS_URL}{sep}prefix={prefix}", dump)
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def _postgres(tmp_path: Path) -> Iterator[DLQUrl]:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    import psycopg

    prefix = f"t{uuid.uuid4().hex[:12]}_"
    table = f"{prefix}dlq"

    def dump() -> bytes:
        with psycopg.connect(POSTGRES_URL) as conn:
            rows = conn.execute(f'SELECT t::text, body FROM "{table}" t').fetchall()
        return b"".join(text.encode() + bytes(body) for text, body in rows)

    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield DLQUrl("postgres", f"{POSTGRES_URL}{sep}table_prefix={prefix}", dump)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


_FACTORIES = {"sqlite": _sqlite, "redis": _redis, "postgres": _postgres}


@pytest.fixture(params=BACKENDS)
def dlq_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DLQUrl]:
    """A fresh, empty queue URL on each backend."""
    yield from _FACTORIES[request.param](tmp_path)

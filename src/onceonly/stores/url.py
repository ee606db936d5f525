"""``open_store(url)``: one URL names a store; ``ONCEONLY_STORE_URL`` supplies the default.

memory://                       a process-local MemoryStore
sqlite:///relative/path.db      a file relative to the working directory
sqlite:////absolute/path.db     an absolute path (four slashes)
redis://host:6379/0             Redis (rediss:// for TLS); options in the query string
redis+cluster://host:7000       Redis Cluster, any node as the seed (rediss+cluster:// TLS)
postgresql://user@host/db       PostgreSQL (postgres:// too); options in the query string
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

from onceonly.errors import ConfigurationError
from onceonly.stores.base import DualStore

ENV_VAR = "ONCEONLY_STORE_URL"
DEFAULT_URL = "sqlite:///onceonly.db"

Opener = Callable[[str], DualStore]
_OPENERS: dict[str, Opener] = {}


def register_scheme(*schemes: str) -> Callable[[Opener], Opener]:
    """Register an opener for URL schemes (backends in other modules plug in here)."""

    def add(opener: Opener) -> Opener:
        for scheme in schemes:
            _OPENERS[scheme] = opener
        return opener

    return add


@register_scheme("memory")
def _open_memory(url: str) -> DualStore:
    from onceonly.stores.memory import MemoryStore

    return MemoryStore(url=url)


@register_scheme("sqlite")
def _open_sqlite(url: str) -> DualStore:
    from onceonly.stores.sqlite import SQLiteStore

    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"bad SQLite store URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return SQLiteStore(rest[1:], url=url)


@register_scheme("redis", "rediss", "redis+cluster", "rediss+cluster")
def _open_redis(url: str) -> DualStore:
    try:
        from onceonly.stores.redis import RedisStore
    except ImportError as exc:
        raise ConfigurationError(f"{url!r} needs redis-py: pip install 'onceonly[redis]'") from exc
    return RedisStore(url)


@register_scheme("postgresql", "postgres")
def _open_postgres(url: str) -> DualStore:
    try:
        from onceonly.stores.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigurationError(
            f"{url!r} needs psycopg 3: pip install 'onceonly[postgres]'"
        ) from exc
    return PostgresStore(url)


def open_store(url: str | None = None) -> DualStore:
    """Open the store named by ``url`` (or ``$ONCEONLY_STORE_URL``, or the SQLite default)."""
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    scheme = urlsplit(url).scheme.lower()
    opener = _OPENERS.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in sorted(_OPENERS))
        raise ConfigurationError(f"unknown store URL scheme in {url!r}; known schemes: {known}")
    return opener(url)

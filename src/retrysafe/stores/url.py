"""``open_store(url)``: one URL names a store; ``RETRYSAFE_STORE_URL`` supplies the default.

memory://                       a process-local MemoryStore (?max_records=N&max_bytes=B)
sqlite:///relative/path.db      a file relative to the working directory
sqlite:////absolute/path.db     an absolute path (four slashes)
redis://host:6379/0             Redis (rediss:// for TLS); options in the query string
redis+cluster://host:7000       Redis Cluster, any node as the seed (rediss+cluster:// TLS)
postgresql://user@host/db       PostgreSQL (postgres:// too); options in the query string

Any of them with ``?local_cache=N`` (and optionally ``&local_cache_bytes=B``) is wrapped in a
:class:`~retrysafe.stores.cached.CachedStore`: replays of completed records answered from this
process's memory, at most N records and B bytes (docs/stores.md, "Local replay cache").

Any other query option must be one the store or its driver takes: a misspelt one is a
:class:`~retrysafe.errors.ConfigurationError` naming it and the valid ones. Messages show a
URL through :func:`redacted_url`, so a password is never echoed. :func:`split_options` is how a
store takes its own options out of its URL (the client's dead-letter queues read theirs the same
way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from retrysafe.errors import ConfigurationError
from retrysafe.stores._base import DualStore
from retrysafe.stores._replay_cache import DEFAULT_MAX_BYTES
from retrysafe.stores._urlopts import UnknownURLOption, redacted_url, split_options

# Options of the local replay cache, taken out of the URL before the backend sees it.
CACHE_OPTIONS: dict[str, Callable[[str], Any]] = {"local_cache": int, "local_cache_bytes": int}

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "open_store",
    "redacted_url",
    "register_scheme",
    "split_options",
]

ENV_VAR = "RETRYSAFE_STORE_URL"
DEFAULT_URL = "sqlite:///retrysafe.db"

Opener = Callable[[str], DualStore]
_OPENERS: dict[str, Opener] = {}


def register_scheme(*schemes: str) -> Callable[[Opener], Opener]:
    """Register an opener for URL schemes (backends in other modules plug in here)."""

    def add(opener: Opener) -> Opener:
        for scheme in schemes:
            _OPENERS[scheme] = opener
        return opener

    return add


# The memory store's bound (docs/stores.md, "Memory store").
MEMORY_OPTIONS: dict[str, Callable[[str], Any]] = {"max_records": int, "max_bytes": int}


@register_scheme("memory")
def _open_memory(url: str) -> DualStore:
    from retrysafe.stores.memory import MemoryStore

    _, options = split_options(url, MEMORY_OPTIONS)  # any other option is a typo: refused
    return MemoryStore(url=url, **options)


@register_scheme("sqlite")
def _open_sqlite(url: str) -> DualStore:
    from retrysafe.stores.sqlite import SQLiteStore

    clean, _ = split_options(url, {})  # SQLite takes no options: any left is a typo
    rest = clean[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"bad SQLite store URL {redacted_url(url)!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return SQLiteStore(rest[1:], url=url)


@register_scheme("redis", "rediss", "redis+cluster", "rediss+cluster")
def _open_redis(url: str) -> DualStore:
    try:
        from retrysafe.stores.redis import RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            f"{redacted_url(url)!r} needs redis-py: pip install 'retrysafe[redis]'"
        ) from exc
    return RedisStore(url)


@register_scheme("postgresql", "postgres")
def _open_postgres(url: str) -> DualStore:
    try:
        from retrysafe.stores.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigurationError(
            f"{redacted_url(url)!r} needs psycopg 3: pip install 'retrysafe[postgres]'"
        ) from exc
    return PostgresStore(url)


def open_store(url: str | None = None) -> DualStore:
    """Open the store named by ``url`` (or ``$RETRYSAFE_STORE_URL``, or the SQLite default)."""
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    scheme = urlsplit(url).scheme.lower()
    opener = _OPENERS.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in sorted(_OPENERS))
        raise ConfigurationError(
            f"unknown store URL scheme in {redacted_url(url)!r}; known schemes: {known}"
        )
    inner_url, options = split_cache_options(url)
    try:
        inner = opener(inner_url)
    except UnknownURLOption as exc:  # list the cache options too: they are valid on any URL
        raise exc.with_options(CACHE_OPTIONS, url) from None
    if "local_cache" not in options:
        return inner
    from retrysafe.stores.cached import CachedStore

    return CachedStore(
        inner,
        options["local_cache"],
        options.get("local_cache_bytes", DEFAULT_MAX_BYTES),
        url=url,
    )


def split_cache_options(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without the local replay cache's options (the store checks the rest), and
    those options."""
    if "local_cache" not in url:
        return url, {}
    inner_url, options = split_options(url, CACHE_OPTIONS, check_rest=False)
    if "local_cache_bytes" in options and "local_cache" not in options:
        raise ConfigurationError(
            f"store URL {redacted_url(url)!r} sets local_cache_bytes without local_cache: "
            "add local_cache=N (the most records to keep) to turn the cache on"
        )
    return inner_url, options

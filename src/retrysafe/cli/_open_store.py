"""How the idempotency-store commands (``keys``, ``store``) open the store ``--store`` names.

Subcommands that talk to a store take ``--store URL`` (default: ``$RETRYSAFE_STORE_URL``, then
the SQLite default); :data:`store_option` gives them that option the same way, and
:func:`using_store` opens it for one command with failures as one-line errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from retrysafe.cli._errors import cli_error
from retrysafe.cli._files import IDEMPOTENCY_STORE, check_sqlite
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.url import ENV_VAR

if TYPE_CHECKING:
    from retrysafe.stores import DualStore

store_option = click.option(
    "--store",
    "store_url",
    envvar=ENV_VAR,
    metavar="URL",
    help=(
        "store URL: memory://, sqlite:///relative.db, sqlite:////abs.db, redis://host:6379/0, "
        f"postgresql://user@host/db (env: {ENV_VAR})"
    ),
)


def open_store_or_exit(url: str | None, *, must_exist: bool = True) -> DualStore:
    """``open_store(url)``; a bad URL or an unusable store is a one-line error, not a traceback.

    A SQLite file is checked first (``_files``): a missing one is reported, not created
    (unless ``must_exist`` is false: ``store init``), and a file of another kind is refused.
    """
    from retrysafe.errors import RetrySafeError
    from retrysafe.stores.url import DEFAULT_URL, open_store

    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    check_sqlite(url, IDEMPOTENCY_STORE, must_exist=must_exist)
    try:
        return open_store(url)
    except RetrySafeError as exc:
        raise cli_error(exc) from exc


@contextlib.contextmanager
def using_store(url: str | None, *, must_exist: bool = True) -> Iterator[DualStore]:
    """An open store for one command, closed after; store failures become one-line errors."""
    from retrysafe.errors import RetrySafeError

    store = open_store_or_exit(url, must_exist=must_exist)
    try:
        yield store
    except RetrySafeError as exc:
        raise cli_error(exc) from exc
    finally:
        store.close()


def store_kind(store: object) -> str:
    """A store's kind for messages: "Redis", "SQLite", ... (behind a ``?local_cache`` wrapper,
    the wrapped store's)."""
    if isinstance(store, CachedStore):
        store = store.inner
    return type(store).__name__.removesuffix("Store")

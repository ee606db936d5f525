"""``retrysafe store init``: set up a store (a PostgreSQL schema; the others need none)."""

from __future__ import annotations

import click

from retrysafe.cli._open_store import store_kind, using_store
from retrysafe.stores.url import ENV_VAR


@click.group()
def store() -> None:
    """Set up a store."""


@store.command("init")
@click.argument("url", envvar=ENV_VAR)
def store_init(url: str) -> None:
    """Create the store's schema if missing (idempotent; PostgreSQL only needs it).

    PostgreSQL: creates the schema, table and indexes (safe to run concurrently and again).
    SQLite creates its table when the file is opened; Redis and memory have no schema.
    """
    with using_store(url, must_exist=False) as opened:
        init = getattr(opened, "init_schema", None)
        if init is None:
            click.echo(f"{store_kind(opened)} store: there is no schema to create, nothing to do")
            return
        init()
    click.echo(f"{store_kind(opened)} store: schema ready")

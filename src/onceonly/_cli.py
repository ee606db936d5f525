"""The ``onceonly`` click group. Each subcommand imports what it needs when it runs.

Subcommands that talk to a store take ``--store URL`` (default: ``$ONCEONLY_STORE_URL``, then
the SQLite default); :data:`store_option` gives them that option the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from onceonly import __version__
from onceonly.client.dlq_cli import dlq
from onceonly.gateway_cli import proxy
from onceonly.report_cli import report
from onceonly.stores.url import ENV_VAR

if TYPE_CHECKING:
    from onceonly.records import Record
    from onceonly.stores.base import DualStore

store_option = click.option(
    "--store",
    "store_url",
    envvar=ENV_VAR,
    metavar="URL",
    help=f"store URL: memory://, sqlite:///relative.db, sqlite:////abs.db (env: {ENV_VAR})",
)


def open_store_or_exit(url: str | None) -> DualStore:
    """``open_store(url)``; a bad URL or an unusable store is a one-line error, not a traceback."""
    from onceonly.errors import OnceOnlyError
    from onceonly.stores.url import open_store

    try:
        return open_store(url)
    except OnceOnlyError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def using_store(url: str | None) -> Iterator[DualStore]:
    """An open store for one command, closed after; store failures become one-line errors."""
    from onceonly.errors import OnceOnlyError

    store = open_store_or_exit(url)
    try:
        yield store
    except OnceOnlyError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onceonly")
def cli() -> None:
    """onceonly: idempotency keys done right, so retries are safe."""


@cli.command()
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="run against this store instead of a fresh SQLite file in a temp dir "
    f"(${ENV_VAR} is deliberately not read: the demo writes records)",
)
@click.option("-v", "--verbose", is_flag=True, help="list every check, not only failed ones")
def demo(store_url: str | None, verbose: bool) -> None:
    """Serve a payments API on a loopback port and hit it with retries and duplicates.

    Exits non-zero if any expectation fails.
    """
    from rich.console import Console

    from onceonly.demo.report import render
    from onceonly.demo.run import run_demo
    from onceonly.errors import OnceOnlyError

    try:
        report = asyncio.run(run_demo(store_url))
    except OnceOnlyError as exc:  # a bad --store URL, an unusable store file
        raise click.ClickException(str(exc)) from exc
    render(report, Console(), verbose=verbose)
    if not report.ok:
        raise SystemExit(1)


# -- keys ------------------------------------------------------------------------------------


def _record_id(key: str, scope: str | None, authorization: str | None, raw_id: bool) -> str:
    """The store id of ``key``: SHA-256 of (scope, key), the scope as the middleware derives it."""
    from onceonly.fingerprint import RequestFacts
    from onceonly.policy import authorization_scope, storage_id

    if raw_id:
        return key
    if scope is None:
        headers = (("authorization", authorization),) if authorization else ()
        scope = authorization_scope(RequestFacts("POST", "/", "", headers, b""))
    return storage_id(scope, key)


def _key_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.argument("key")(command)
    command = click.option(
        "--authorization",
        metavar="VALUE",
        help="the Authorization header the client sent (the default scope hashes it); "
        "omit for keys sent without credentials",
    )(command)
    command = click.option(
        "--scope", metavar="SCOPE", help="a scope string, for a custom Policy.scope"
    )(command)
    command = click.option(
        "--id", "raw_id", is_flag=True, help="KEY is already a store id (64 hex digits)"
    )(command)
    return store_option(command)


@cli.group()
def keys() -> None:
    """Inspect or remove the record of one idempotency key."""


@keys.command("show")
@_key_options
def keys_show(
    store_url: str | None, key: str, scope: str | None, authorization: str | None, raw_id: bool
) -> None:
    """Show the record of KEY (exit 1 if there is none)."""
    with using_store(store_url) as store:
        record = store.get(_record_id(key, scope, authorization, raw_id))
    if record is None:
        click.echo(f"no live record for this key in {store.url}", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(_describe(record), indent=2))


@keys.command("delete")
@_key_options
def keys_delete(
    store_url: str | None, key: str, scope: str | None, authorization: str | None, raw_id: bool
) -> None:
    """Delete the record of KEY whatever its state, so the key acts as new (exit 1 if none)."""
    with using_store(store_url) as store:
        found = store.delete(_record_id(key, scope, authorization, raw_id))
    if not found:
        click.echo(f"no record for this key in {store.url}", err=True)
        raise SystemExit(1)
    click.echo("deleted")


def _describe(record: Record) -> dict[str, object]:
    from onceonly.records import resolve

    def when(t: float) -> str | None:
        return datetime.fromtimestamp(t, UTC).isoformat() if t else None

    response = record.response
    return {
        "id": record.id,
        # The state now, with a lapsed TTL applied (a completed record past it is a tombstone).
        "state": str(resolve(record, time.time())),
        "fingerprint": record.fingerprint,
        "token": record.token,
        "created_at": when(record.created_at),
        "lease_until": when(record.lease_until),
        "expires_at": when(record.expires_at),
        "retain_until": when(record.retain_until),
        "response": None
        if response is None
        else {
            "status": response.status,
            "headers": [list(h) for h in response.headers],
            "body_bytes": len(response.body),
            "body": response.body.decode("utf-8", "replace"),
            "replayable": response.replayable,
        },
    }


cli.add_command(proxy)  # `onceonly proxy`: the gateway (docs/gateway.md)
cli.add_command(report)  # `onceonly report`: audit log, SLOs (docs/observability.md)
cli.add_command(dlq)  # `onceonly dlq`: the client's dead-letter queue (docs/client.md)

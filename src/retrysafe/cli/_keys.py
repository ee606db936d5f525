"""``retrysafe keys show|delete|purge|stats``: one key's record, and the store's upkeep.

A key is looked up as the middleware stores it: under its principal (whose key: the
``--authorization``, ``--header``, ``--cookie``, ``--user``, ``--shared`` or ``--scope`` the
request had) and the deployment's secret, or directly by its store id (``--id``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from retrysafe.cli._args import parse_header
from retrysafe.cli._errors import BadInput
from retrysafe.cli._open_store import store_kind, store_option, using_store
from retrysafe.stores.url import redacted_url

if TYPE_CHECKING:
    from retrysafe._records import Record
    from retrysafe.stores import DualStore


_STORE_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class _Owner:
    """Whose key ``retrysafe keys`` looks up: the request facts a scope reads, and that scope."""

    authorization: str | None = None
    header: str | None = None
    cookie: str | None = None
    user: str | None = None
    shared: bool = False
    principal: str | None = None

    def principal_of(self) -> str:
        """The principal string the middleware's scope derives from the same request."""
        from retrysafe._fingerprint import RequestFacts
        from retrysafe._scopes import (
            authorization_scope,
            cookie_scope,
            header_scope,
            shared_scope,
            user_scope,
        )

        chosen = [
            name for name, value in vars(self).items() if value is not None and value is not False
        ]
        if len(chosen) != 1:
            raise click.UsageError(
                "say whose key it is with exactly one of --authorization, --header, --cookie, "
                "--user, --shared or --scope (or give a store id with --id)"
            )
        headers: list[tuple[str, str]] = []
        if self.principal is not None:
            return self.principal
        if self.authorization is not None:
            headers.append(("authorization", self.authorization))
            scope = authorization_scope
        elif self.header is not None:
            name, value = parse_header(self.header, "--header")
            headers.append((name.lower(), value))
            scope = header_scope(name)
        elif self.cookie is not None:
            name, sep, _ = self.cookie.partition("=")
            if not sep or not name.strip():
                raise click.UsageError("--cookie takes 'name=value', e.g. 'sessionid=abc123'")
            headers.append(("cookie", self.cookie))
            scope = cookie_scope(name.strip())
        elif self.user is not None:
            scope = user_scope
        else:
            scope = shared_scope
        principal = scope(RequestFacts("POST", "/", "", headers, b"", self.user))
        if principal is None:
            raise click.UsageError("that value is empty: no request with it has a key")
        return principal


def _record_id(store: DualStore, key: str, owner: _Owner, raw_id: bool) -> str:
    """The store id of ``key``: SHA-256 of (principal id, key), as the middleware derives it.

    The principal id is keyed by the deployment's secret: ``$RETRYSAFE_SECRET`` when set (as
    it must then be for the middleware), else the one the middleware kept in the store.
    """
    from retrysafe._keyring import SECRET_ENV, SECRET_ID, configured_secret, stored_secret
    from retrysafe._policy import storage_id
    from retrysafe._scopes import PrincipalKey

    if raw_id:
        if not _STORE_ID.match(key) and key != SECRET_ID:
            raise BadInput(
                f"--id: {key[:80]!r} is not a store id; a store id is 64 lowercase hex digits, "
                "as `retrysafe keys show` prints it (or drop --id to give the client's key)"
            )
        return key
    principal = owner.principal_of()
    secret = configured_secret(None) or stored_secret(store)
    if secret is None:
        raise click.ClickException(
            f"{SECRET_ENV} is not set and the store holds no principal secret, so no keyed "
            "request was ever stored there; set it as the middleware has it"
        )
    return storage_id(PrincipalKey(secret).id_of(principal), key)


def _key_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.argument("key")(command)
    command = click.option(
        "--authorization",
        metavar="VALUE",
        help="the Authorization header the client sent (the default scope)",
    )(command)
    command = click.option(
        "--header",
        metavar="'NAME: VALUE'",
        help="the header a header_scope(NAME) reads, e.g. 'X-Api-Key: k_123'",
    )(command)
    command = click.option(
        "--cookie",
        metavar="NAME=VALUE",
        help="the cookie a cookie_scope(NAME) reads, e.g. sessionid=abc123",
    )(command)
    command = click.option("--user", metavar="ID", help="the authenticated user user_scope read")(
        command
    )
    command = click.option(
        "--shared", is_flag=True, default=None, help="the key was sent under shared_scope"
    )(command)
    command = click.option(
        "--scope",
        "principal",
        metavar="PRINCIPAL",
        help="the string a custom Policy.scope returned for the request",
    )(command)
    command = click.option(
        "--id", "raw_id", is_flag=True, help="KEY is already a store id (64 hex digits)"
    )(command)
    return store_option(command)


@click.group()
def keys() -> None:
    """Inspect or remove one key's record; purge expired records; count records per state."""


@keys.command("show")
@_key_options
def keys_show(store_url: str | None, key: str, raw_id: bool, **owner: Any) -> None:
    """Show the record of KEY (exit 1 if there is none)."""
    with using_store(store_url) as store:
        record = store.get(_record_id(store, key, _Owner(**owner), raw_id))
    if record is None:
        click.echo(f"no live record for this key in {redacted_url(store.url)}", err=True)
        raise SystemExit(1)
    click.echo(json.dumps(_describe(record), indent=2))


@keys.command("delete")
@_key_options
def keys_delete(store_url: str | None, key: str, raw_id: bool, **owner: Any) -> None:
    """Delete the record of KEY whatever its state, so the key acts as new (exit 1 if none)."""
    with using_store(store_url) as store:
        found = store.delete(_record_id(store, key, _Owner(**owner), raw_id))
    if not found:
        click.echo(f"no record for this key in {redacted_url(store.url)}", err=True)
        raise SystemExit(1)
    click.echo("deleted")


@keys.command("purge")
@store_option
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="rows per batch; batches repeat until one comes back short",
)
def keys_purge(store_url: str | None, limit: int) -> None:
    """Strip bodies past their TTL and delete records past their retention (SPEC 14).

    Index-driven batches of LIMIT rows, repeated until the store is caught up, so it is safe
    to run from cron while traffic flows. Redis and the memory store expire records by
    themselves: there is nothing to purge.
    """
    with using_store(store_url) as store:
        purge = getattr(store, "purge", None)
        if purge is None:
            click.echo(f"{store_kind(store)} store expires records by itself: nothing to purge")
            return
        deleted = 0
        while True:
            n = int(purge(limit))
            deleted += n
            if n < limit:
                break
    click.echo(f"purged: {deleted} expired record(s) deleted")


@keys.command("stats")
@store_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def keys_stats(store_url: str | None, as_json: bool) -> None:
    """Count the records per state (admin: reads the whole store; never on a request path)."""
    from retrysafe.stores import KeyStats

    with using_store(store_url) as store:
        stats_of = getattr(store, "stats", None)
        if stats_of is None:
            raise click.ClickException(f"{store_kind(store)} store cannot count its records")
        stats = stats_of()
    assert isinstance(stats, KeyStats)
    if as_json:
        click.echo(json.dumps({**stats.counts, "total": stats.total, "complete": stats.complete}))
        return
    for state, n in stats.counts.items():
        click.echo(f"{state:<13} {n}")
    click.echo(f"{'total':<13} {stats.total}")
    if not stats.complete:
        click.echo("(stopped at the scan bound: the counts are a lower bound)", err=True)


def _describe(record: Record) -> dict[str, object]:
    from retrysafe._records import resolve

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

"""The ``retrysafe`` click group. Each subcommand imports what it needs when it runs.

Subcommands that talk to a store take ``--store URL`` (default: ``$RETRYSAFE_STORE_URL``, then
the SQLite default); :data:`store_option` gives them that option the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from retrysafe import __version__
from retrysafe._cli_args import parse_header
from retrysafe._cli_errors import BadInput, Group, cli_error
from retrysafe._cli_files import IDEMPOTENCY_STORE, check_sqlite
from retrysafe.check_cli import check
from retrysafe.client.dlq_cli import dlq
from retrysafe.gateway_cli import proxy
from retrysafe.report_cli import report
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.url import ENV_VAR, redacted_url

if TYPE_CHECKING:
    from retrysafe.records import Record
    from retrysafe.stores.base import DualStore

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

    A SQLite file is checked first (``_cli_files``): a missing one is reported, not created
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retrysafe")
def cli() -> None:
    """retrysafe: idempotency keys done right, so retries are safe."""


@cli.command()
@click.option(
    "--operations",
    "-n",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="purchases + refunds the agent performs",
)
@click.option(
    "--seed",
    default=7,
    show_default=True,
    type=int,
    help="seeds the plan, the faults and the retry jitter",
)
@click.option(
    "--loss-rate",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of answers lost after the handler ran",
)
@click.option(
    "--burst-rate",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of requests that start a burst of 503s",
)
@click.option(
    "--burst-seconds",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0),
    help="how long a 503 burst lasts",
)
@click.option(
    "--latency-ms",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0),
    help="extra latency per request, uniform in [0, this]",
)
@click.option(
    "--slow-rate",
    default=0.02,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of calls slower than the agent's read timeout (in flight on retry)",
)
@click.option(
    "--lanes",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="orders the agent works on concurrently",
)
@click.option(
    "--crash/--no-crash",
    default=True,
    show_default=True,
    help="kill the agent process mid-run and resume in a new one",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="also run without idempotency, side by side",
)
@click.option(
    "--scenarios",
    is_flag=True,
    help="instead: the six HTTP scenarios (lost response, duplicates, mismatch, ...)",
)
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="with --scenarios: run against this store instead of a fresh SQLite file in a temp "
    f"dir (${ENV_VAR} is deliberately not read: the demo writes records)",
)
@click.option("-v", "--verbose", is_flag=True, help="with --scenarios: list every check")
def demo(
    operations: int,
    seed: int,
    loss_rate: float,
    burst_rate: float,
    burst_seconds: float,
    latency_ms: float,
    slow_rate: float,
    lanes: int,
    crash: bool,
    compare: bool,
    scenarios: bool,
    store_url: str | None,
    verbose: bool,
) -> None:
    """An agent makes purchases and refunds through a faulty network, crashes and resumes.

    A payments API (retrysafe middleware, SQLite store in a temp dir) is served on a loopback
    port behind a fault injector; the agent runs in its own process, is killed with SIGKILL
    halfway and resumed; then the same run without idempotency, side by side. Exits non-zero
    if any expectation fails (no duplicates with retrysafe; duplicates without).
    """
    if scenarios:
        _demo_scenarios(store_url, verbose)
        return
    if store_url is not None:
        raise click.UsageError("--store applies to --scenarios (the agent demo uses SQLite)")
    from rich.console import Console

    from retrysafe.demo.agent_report import (
        INTRO,
        RichProgress,
        describe_faults,
        render_agent_report,
    )
    from retrysafe.demo.agentdemo import DemoFailed, DemoOptions, run_agent_demo
    from retrysafe.demo.plan import Faults

    try:
        faults = Faults(
            loss_rate=loss_rate,
            burst_rate=burst_rate,
            burst_seconds=burst_seconds,
            latency_ms=latency_ms,
            slow_rate=slow_rate,
        )
        options = DemoOptions(
            operations=operations,
            seed=seed,
            faults=faults,
            lanes=lanes,
            crash=crash,
            compare=compare,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    console = Console()
    console.print(INTRO.format(faults=describe_faults(options)))
    try:
        with RichProgress(console) as progress:
            report = asyncio.run(run_agent_demo(options, progress))
    except DemoFailed as exc:
        raise click.ClickException(str(exc)) from exc
    render_agent_report(report, console)
    if not report.ok:
        raise SystemExit(1)


def _demo_scenarios(store_url: str | None, verbose: bool) -> None:
    """``retrysafe demo --scenarios``: the six HTTP scenarios against the payments API."""
    from rich.console import Console

    from retrysafe.demo.report import render
    from retrysafe.demo.run import run_demo
    from retrysafe.errors import RetrySafeError

    try:
        report = asyncio.run(run_demo(store_url))
    except RetrySafeError as exc:  # a bad --store URL, an unusable or unreachable store
        raise cli_error(exc) from exc
    render(report, Console(), verbose=verbose)
    if not report.ok:
        raise SystemExit(1)


# -- keys ------------------------------------------------------------------------------------


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
        from retrysafe.fingerprint import RequestFacts
        from retrysafe.scopes import (
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
    from retrysafe.keyring import SECRET_ENV, SECRET_ID, configured_secret, stored_secret
    from retrysafe.policy import storage_id
    from retrysafe.scopes import PrincipalKey

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


@cli.group()
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
            click.echo(f"{_kind(store)} store expires records by itself: nothing to purge")
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
    from retrysafe.stores._stats import KeyStats

    with using_store(store_url) as store:
        stats_of = getattr(store, "stats", None)
        if stats_of is None:
            raise click.ClickException(f"{_kind(store)} store cannot count its records")
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


def _kind(store: object) -> str:
    """A store's kind for messages: "Redis", "SQLite", ... (behind a ``?local_cache`` wrapper,
    the wrapped store's)."""
    if isinstance(store, CachedStore):
        store = store.inner
    return type(store).__name__.removesuffix("Store")


@cli.group()
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
            click.echo(f"{_kind(opened)} store: there is no schema to create, nothing to do")
            return
        init()
    click.echo(f"{_kind(opened)} store: schema ready")


def _describe(record: Record) -> dict[str, object]:
    from retrysafe.records import resolve

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


cli.add_command(proxy)  # `retrysafe proxy`: the gateway (docs/gateway.md)
cli.add_command(report)  # `retrysafe report`: audit log, SLOs (docs/observability.md)
cli.add_command(dlq)  # `retrysafe dlq`: the client's dead-letter queue (docs/client.md)
cli.add_command(check)  # `retrysafe check URL`: an endpoint's key conformance (docs/check.md)

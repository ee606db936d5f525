"""``retrysafe dlq list|show|replay|purge``: look after the dead-letter queue (SPEC 25).

Registered on the ``retrysafe`` click group. ``--store`` names the DLQ: a SQLite file, Redis or
PostgreSQL URL (default ``$RETRYSAFE_DLQ_URL``, then ``sqlite:///retrysafe-dlq.db``). Replays go
through an idempotent transport; credentials are never in the queue, so pass them with ``-H``:
an entry whose credential headers are not given is not sent (it stays parked, and the command
says which header to pass), since without them the server would run it a second time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click

from retrysafe.client.dlq import DeadLetter, DeadLetterQueue, EntryState
from retrysafe.client.dlq_credentials import header_label
from retrysafe.errors import RetrySafeError
from retrysafe.stores.url import redacted_url

ENV_VAR = "RETRYSAFE_DLQ_URL"
DEFAULT_URL = "sqlite:///retrysafe-dlq.db"

store_option = click.option(
    "--store",
    "store_url",
    envvar=ENV_VAR,
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help=(
        "the dead-letter queue: sqlite:///relative.db, sqlite:////abs.db, "
        f"redis://host:6379/0 or postgresql://user@host/db (env: {ENV_VAR})"
    ),
)


@contextmanager
def _queue(url: str) -> Iterator[DeadLetterQueue]:
    try:
        queue = DeadLetterQueue(url)
    except RetrySafeError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield queue
    except RetrySafeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        queue.close()


def _find(queue: DeadLetterQueue, prefix: str) -> DeadLetter:
    """The entry whose id is or starts with ``prefix`` (ids are long; 8 characters do)."""
    matches = [e for e in queue.entries(limit=100_000) if e.id.startswith(prefix)]
    if not matches:
        raise click.ClickException(f"no dead-letter entry {prefix!r}")
    if len(matches) > 1:
        raise click.ClickException(f"{prefix!r} matches {len(matches)} entries; give more of it")
    return matches[0]


def _due(e: DeadLetter, now: float) -> str:
    if e.state is EntryState.REPLAYING:  # not_before is the end of the replayer's claim
        return f"claimed for {e.not_before - now:.0f} s" if e.not_before > now else "now"
    if e.state is not EntryState.PARKED:
        return "-"
    if e.replay_by < now:
        return "expired"
    return "now" if e.not_before <= now else f"in {e.not_before - now:.0f} s"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def dlq() -> None:
    """Inspect, replay or purge calls parked in the dead-letter queue."""


@dlq.command("list")
@store_option
@click.option(
    "--state",
    type=click.Choice([s.value for s in EntryState]),
    help="only entries in this state (default: all)",
)
def dlq_list(store_url: str, state: str | None) -> None:
    """A table of entries, oldest first."""
    from rich.console import Console
    from rich.table import Table

    with _queue(store_url) as queue:
        entries = queue.entries(EntryState(state) if state else None)
    now = time.time()
    noun = "entry" if len(entries) == 1 else "entries"
    where = redacted_url(store_url).partition("?")[0]  # no password; options are noise here
    table = Table(title=f"{len(entries)} {noun} in {where}")
    for column in ("id", "state", "reason", "key", "tries"):
        table.add_column(column, no_wrap=True)
    for column in ("request", "last error", "due"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.id[:8],
            e.state.value,
            e.reason,
            e.key[:8],
            f"{len(e.attempts)}+{e.replays}",
            f"{e.method} {e.url}",
            e.last_error[:60],
            _due(e, now),
        )
    Console().print(table)


@dlq.command("show")
@store_option
@click.argument("entry")
def dlq_show(store_url: str, entry: str) -> None:
    """Everything stored for ENTRY (an id or a unique prefix), as JSON."""
    with _queue(store_url) as queue:
        e = _find(queue, entry)
    doc = {
        "id": e.id,
        "state": e.state.value,
        "reason": e.reason,
        "key": e.key,
        "method": e.method,
        "url": e.url,
        "headers": [list(h) for h in e.headers],
        "redacted_headers": list(e.redacted),
        "body": e.body.decode("utf-8", "replace"),
        "created_at": _when(e.created_at),
        "not_before": _when(e.not_before),
        "replay_by": _when(e.replay_by),
        "replays": e.replays,
        "last_status": e.last_status,
        "last_error": e.last_error,
        "attempts": [
            {"number": a.number, "status": a.status, "error": a.error, "duration_s": a.duration}
            for a in e.attempts
        ],
    }
    click.echo(json.dumps(doc, indent=2))


@dlq.command("replay")
@store_option
@click.argument("entries", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every due entry")
@click.option("--force", is_flag=True, help="ignore not-before times")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="a header for the live client, e.g. credentials the queue never stores (repeatable)",
)
@click.option("--rate", type=float, default=5.0, show_default=True, help="replays per second")
def dlq_replay(
    store_url: str,
    entries: tuple[str, ...],
    replay_all: bool,
    force: bool,
    headers: tuple[str, ...],
    rate: float,
) -> None:
    """Re-send ENTRIES (ids or prefixes), or --all due ones, with their original keys.

    Exits 1 when an entry failed (a terminal answer such as a 422 key mismatch), is past its
    replay window and needs reconciling, or was not sent because a credential header it was
    made with (Authorization, Cookie...) was not given with -H.
    """
    import httpx
    from rich.console import Console
    from rich.table import Table

    from retrysafe.client.transport import IdempotentTransport

    if bool(entries) == replay_all:
        raise click.UsageError("give entry ids, or --all (not both)")
    live: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{header!r} is not 'Name: value'", param_hint="--header")
        live[name.strip()] = value.strip()
    with _queue(store_url) as queue:
        queue.rate = rate
        ids = [_find(queue, prefix).id for prefix in entries] if entries else None
        with httpx.Client(transport=IdempotentTransport(), headers=live) as client:
            results = queue.replay(client, ids, force=force or bool(entries))
    table = Table(title=f"replayed {len(results)} entries")
    for column in ("id", "key", "now", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for r in results:
        status = "" if r.status is None else str(r.status) + (" (replay)" if r.replayed else "")
        table.add_row(r.id[:8], r.key[:8], r.state.value, status, r.detail[:80])
    Console().print(table)
    for r in results:
        if r.missing:
            given = " ".join(f"-H '{header_label(n)}: ...'" for n in r.missing)
            click.echo(
                f"{r.id[:8]} not sent, still parked: it was made with "
                f"{', '.join(header_label(n) for n in r.missing)}, which the queue does not "
                f"store; sent without it the server would run it again. Pass {given}",
                err=True,
            )
    if any(r.state in (EntryState.FAILED, EntryState.RECONCILE) or r.missing for r in results):
        raise SystemExit(1)


@dlq.command("purge")
@store_option
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in EntryState]),
    help="states to delete (repeatable; default: done and failed)",
)
def dlq_purge(store_url: str, states: tuple[str, ...]) -> None:
    """Delete finished entries (or those in --state)."""
    with _queue(store_url) as queue:
        removed = queue.purge(*(EntryState(s) for s in states))
    click.echo(f"purged {removed} entries")

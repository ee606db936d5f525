"""``retrysafe dlq list|show|replay|purge``: look after the dead-letter queue (SPEC 25).

Registered on the ``retrysafe`` click group. ``--store`` names the DLQ: a SQLite file, Redis or
PostgreSQL URL (default ``$RETRYSAFE_DLQ_URL``, then ``sqlite:///retrysafe-dlq.db``). Replays go
through an idempotent transport; credentials are never in the queue, so pass them with ``-H``:
an entry whose credential headers are not given is not sent (it stays parked, and the command
says which header to pass), since without them the server would run it a second time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click

from retrysafe.cli._args import parse_header
from retrysafe.cli._errors import BadInput, cli_error
from retrysafe.cli._files import DEAD_LETTER_QUEUE, check_sqlite
from retrysafe.client.dlq import DeadLetter, DeadLetterQueue, EntryState, header_label
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


# An entry id is a UUID; a prefix of one is what `dlq list` shows (8 characters).
_ID_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{0,35}$")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@contextmanager
def _queue(url: str) -> Iterator[DeadLetterQueue]:
    """The queue at ``url``; a missing SQLite file is reported, not created, and a file of
    another kind (the idempotency store, a text file) is refused (``_files``)."""
    check_sqlite(url if "://" in url else f"sqlite:///{url}", DEAD_LETTER_QUEUE)
    try:
        queue = DeadLetterQueue(url)
    except RetrySafeError as exc:
        raise cli_error(exc) from exc
    try:
        yield queue
    except RetrySafeError as exc:
        raise cli_error(exc) from exc
    finally:
        queue.close()


def _find(queue: DeadLetterQueue, prefix: str) -> DeadLetter:
    """The entry whose id is or starts with ``prefix`` (ids are long; 8 characters do)."""
    if not _ID_PREFIX.match(prefix.lower()):
        raise BadInput(
            f"{prefix!r} is not an entry id: give the id or its first characters as "
            "`retrysafe dlq list` shows them (hex digits, e.g. 3f2a9c1e)"
        )
    prefix = prefix.lower()
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
    """A time with its zone, always UTC: ``2026-12-06T03:40:26+00:00``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


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
    where = redacted_url(store_url).partition("?")[0]  # no password; options are noise here
    table = Table(title=f"{_plural(len(entries), 'entry', 'entries')} in {where}")
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

    from retrysafe.client import IdempotentTransport

    if bool(entries) == replay_all:
        raise click.UsageError("give entry ids, or --all (not both)")
    live: dict[str, str] = {}
    for header in headers:
        name, value = parse_header(header, "--header", "Authorization: Bearer ...")
        live[name] = value
    with _queue(store_url) as queue:
        queue.rate = rate
        ids = [_find(queue, prefix).id for prefix in entries] if entries else None
        with httpx.Client(transport=IdempotentTransport(), headers=live) as client:
            results = queue.replay(client, ids, force=force or bool(entries))
    if not results:
        with _queue(store_url) as queue:
            listed = queue.entries(limit=100_000)
        named = [e for e in listed if ids is None or e.id in ids]
        click.echo(_why_nothing(named, time.time(), named=ids is not None), err=True)
        return
    table = Table(title=f"replayed {_plural(len(results), 'entry', 'entries')}")
    for column in ("id", "key", "state", "status"):
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
    click.echo(f"purged {_plural(removed, 'entry', 'entries')}")


_NOT_REPLAYED = {
    EntryState.REPLAYING: "is being replayed by another replayer (its claim lapses if it died)",
    EntryState.DONE: "is done (a replay got its answer)",
    EntryState.FAILED: "failed (a terminal answer; `retrysafe dlq show` has it)",
    EntryState.RECONCILE: "is past its replay window: check the far side by hand",
}


def _why_nothing(entries: list[DeadLetter], now: float, *, named: bool) -> str:
    """Why a replay sent nothing: the named entries are finished, no entry is parked, or none
    is due yet (and when the next is)."""
    if named:
        states = ", ".join(f"{e.id[:8]} {_NOT_REPLAYED.get(e.state, 'is parked')}" for e in entries)
        return f"nothing replayed: {states or 'the entries are gone'}"
    parked = [e for e in entries if e.state is EntryState.PARKED]
    claimed = [e for e in entries if e.state is EntryState.REPLAYING]
    if parked:
        soonest = min(e.not_before for e in parked) - now
        return (
            f"nothing replayed: {_plural(len(parked), 'parked entry is', 'parked entries are')} "
            f"not due yet (the next in {soonest:.0f} s); --force replays them now"
        )
    if claimed:
        return (
            f"nothing replayed: {_plural(len(claimed), 'entry is', 'entries are')} being "
            "replayed by another replayer (its claim lapses on its own if it died)"
        )
    return "nothing replayed: no entry is parked (`retrysafe dlq list` shows every state)"

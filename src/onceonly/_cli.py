"""The ``onceonly`` click group. Each subcommand imports what it needs when it runs.

Subcommands that talk to a store take ``--store URL`` (default: ``$ONCEONLY_STORE_URL``, then
the SQLite default); :data:`store_option` gives them that option the same way.
"""

from __future__ import annotations

import asyncio

import click

from onceonly import __version__
from onceonly.stores.url import ENV_VAR

store_option = click.option(
    "--store",
    "store_url",
    envvar=ENV_VAR,
    metavar="URL",
    help=f"store URL: memory://, sqlite:///relative.db, sqlite:////abs.db (env: {ENV_VAR})",
)


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

    report = asyncio.run(run_demo(store_url))
    render(report, Console(), verbose=verbose)
    if not report.ok:
        raise SystemExit(1)

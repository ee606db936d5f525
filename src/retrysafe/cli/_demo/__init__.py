"""``retrysafe demo``: an agent through a faulty network, or the six HTTP scenarios (docs/demo.md).

The demo ships with the command line (it needs the ``[cli]`` extra) and only this command
imports it, when it runs; the library never does. The agent demo is ``agentdemo`` (the
orchestrator), ``agent`` (the agent's own process), ``plan``, ``payments``, ``faults``,
``server`` and ``agent_report``; the six HTTP scenarios are ``run``, ``scenarios``, ``app``
and ``report``.
"""

from __future__ import annotations

import asyncio

import click

from retrysafe.cli._errors import cli_error
from retrysafe.stores.url import ENV_VAR


@click.command()
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

    from retrysafe.cli._demo.agent_report import (
        INTRO,
        RichProgress,
        describe_faults,
        render_agent_report,
    )
    from retrysafe.cli._demo.agentdemo import DemoFailed, DemoOptions, run_agent_demo
    from retrysafe.cli._demo.plan import Faults

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

    from retrysafe.cli._demo.report import render
    from retrysafe.cli._demo.run import run_demo
    from retrysafe.errors import RetrySafeError

    try:
        report = asyncio.run(run_demo(store_url))
    except RetrySafeError as exc:  # a bad --store URL, an unusable or unreachable store
        raise cli_error(exc) from exc
    render(report, Console(), verbose=verbose)
    if not report.ok:
        raise SystemExit(1)

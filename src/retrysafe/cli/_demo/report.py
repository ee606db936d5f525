"""The demo's summary, printed with rich: one row per scenario, then the verdict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from retrysafe.cli._demo.run import DemoReport
from retrysafe.stores.url import redacted_url

INTRO = (
    "A payments API (Starlette + retrysafe's ASGI middleware, {store}) is served on {url}.\n"
    "The demo fires retries, duplicates and mistakes at it; the app's own ledger says what "
    "really ran."
)


def render(report: DemoReport, console: Console, *, verbose: bool = False) -> None:
    """Print the summary; every check is listed with ``verbose``, failed ones always."""
    console.print(
        INTRO.format(store=redacted_url(report.store_url), url=report.url or "a loopback port")
    )
    table = Table(title="retrysafe demo", show_lines=True, expand=False)
    table.add_column("Scenario: what the client did", min_width=22)
    table.add_column("Ran", justify="right", no_wrap=True)
    table.add_column("Replays", justify="right", no_wrap=True)
    table.add_column("Refused: why")
    table.add_column("Outcomes")
    table.add_column("Checks", justify="right", no_wrap=True)
    for s in report.scenarios:
        scenario = Text(s.name, style="bold")
        scenario.append(f"\n{s.did}", style="dim")
        passed = sum(c.ok for c in s.checks)
        verdict = Text(
            f"{passed}/{len(s.checks)} {'✓' if s.ok else '✗'}",
            style="green" if s.ok else "bold red",
        )
        table.add_row(
            scenario,
            str(s.ran),
            str(s.replayed),
            "\n".join(r.replace(" ", "\n", 1) for r in s.refused) or "—",
            "\n".join(f"{k} {v}" for k, v in s.outcomes.items()) or "—",
            verdict,
        )
    console.print(table)
    console.print(
        "Ran: real handler executions, counted by the app. Outcomes: what the store answered "
        "each claim (released: a 5xx freed the key for a retry).",
        style="dim",
    )
    for s in report.scenarios:
        shown = [c for c in s.checks if verbose or not c.ok]
        if shown:
            console.print(Text(s.name, style="bold"))
        for check in shown:
            mark, style = ("✓", "green") if check.ok else ("✗ FAILED:", "bold red")
            console.print(f"  {mark} {check.what}", style=style)
    console.print(f"charges in the app's ledger: {report.charges}")
    twice = len(report.charged_twice)
    names = f" ({', '.join(report.charged_twice)})" if twice else ""
    console.print(
        f"customers charged twice: {twice}{names}", style="bold green" if not twice else "bold red"
    )
    failed = sum(not c.ok for s in report.scenarios for c in s.checks)
    total = sum(len(s.checks) for s in report.scenarios)
    if report.ok:
        console.print(f"all {total} expectations met in {report.seconds:.1f} s", style="bold green")
    else:
        console.print(f"{failed} of {total} expectations FAILED", style="bold red")

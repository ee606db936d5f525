"""The agent demo on screen: live rich progress bars, then the side-by-side table and checks."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from retrysafe.cli._demo.agentdemo import AgentDemoReport, DemoOptions, ModeResult

INTRO = (
    "An agent buys and refunds through a payments API (Starlette on 127.0.0.1) behind a "
    "faulty network:\n{faults}.\nIt runs as its own OS process; halfway through it is "
    "killed with SIGKILL inside a purchase, and a new process resumes the same agent run.\n"
    "Then the same run again with idempotency switched off (no middleware, plain tools)."
)


class RichProgress:
    """One progress bar per mode, with a line saying what is happening now."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<13}", style="bold"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("ops"),
            TimeElapsedColumn(),
            # Only the note gives way on a narrow terminal, never the figures.
            TextColumn(
                "{task.fields[note]}",
                style="dim",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def begin(self, mode: str, total: int) -> None:
        self.tasks[mode] = self.progress.add_task(mode, total=total, note="agent process running")

    def advance(self, mode: str, completed: int) -> None:
        self.progress.update(self.tasks[mode], completed=completed)

    def note(self, mode: str, text: str) -> None:
        self.progress.update(self.tasks[mode], note=text)


def describe_faults(options: DemoOptions) -> str:
    f = options.faults
    return (
        f"{f.loss_rate:.0%} of answers lost after the handler ran, "
        f"{f.burst_rate:.0%} of requests start a {f.burst_seconds:g} s burst of 503s, "
        f"0–{f.latency_ms:g} ms latency, {f.slow_rate:.0%} of calls slower "
        f"({f.slow_seconds:g} s) than the agent's read timeout"
    )


def _money(cents: int) -> str:
    return f"€{cents / 100:,.2f}"


def _rows(run: ModeResult) -> list[tuple[str, str]]:
    """(label, value) per table row for one mode; the labels are the same in every mode."""
    c, tools, replays = run.counts, run.tool_claims, run.dlq_replays
    killed = sum(w.killed for w in run.workers)
    on = run.idempotent
    dlq_done = f"{replays['done']} ({replays['replayed']})" if on else str(replays["done"])
    return [
        (
            "operations (purchases+refunds)",
            f"{run.operations} ({run.purchases}+{run.refunds_planned})",
        ),
        ("agent processes", f"{len(run.workers)} ({killed} killed)" if killed else "1"),
        ("HTTP attempts at the API", str(c.attempts)),
        ("retries", str(c.retries)),
        ("answers lost after the work", str(c.lost)),
        ("503s injected (bursts)", f"{c.unavailable} ({c.bursts})"),
        ("replays served by the API", str(c.replays) if on else "—"),
        (
            "tool calls replayed (taken over)",
            f"{tools['completed']} ({tools['recovered']})" if on else "—",
        ),
        ("conflicts (409/422)", str(c.conflicts)),
        ("circuit trips", str(run.trips)),
        ("turns deferred and re-run", str(run.deferrals)),
        ("DLQ entries parked", str(sum(run.dlq_states.values()))),
        ("DLQ replays done (replayed)", dlq_done),
        (f"charges in ledger (plan {run.purchases})", str(run.charges)),
        (f"refunds in ledger (plan {run.refunds_planned})", str(run.refunds)),
    ]


def _crash(report: AgentDemoReport) -> str:
    charges = sorted({r.crashed_at_charge for r in report.runs if r.crashed_at_charge})
    return " and ".join(f"#{n}" for n in charges)


def render_agent_report(report: AgentDemoReport, console: Console) -> None:
    """The side-by-side table, the checks, and the verdict."""
    table = Table(title="retrysafe agent demo", expand=False)
    table.add_column("", style="bold")
    columns = [_rows(run) for run in report.runs]
    for run in report.runs:
        table.add_column(run.mode, justify="right")
    for i, (label, _) in enumerate(columns[0] if columns else ()):
        table.add_row(label, *(col[i][1] for col in columns))
    dupes, money = [], []
    for run in report.runs:
        style = "bold green" if run.duplicates == 0 else "bold red"
        dupes.append(Text(str(run.duplicates), style=style))
        money.append(Text(_money(run.overcharged_cents), style=style))
    table.add_row(Text("duplicates (money moved twice)", style="bold"), *dupes)
    table.add_row(Text("net overcharge", style="bold"), *money)
    table.add_row("time", *(f"{run.seconds:.1f} s" for run in report.runs))
    console.print(table)
    crash = _crash(report)
    console.print(
        "Counted outside retrysafe: HTTP traffic by the fault layer, money by the API's own "
        "ledger, tool and DLQ figures by the agent processes."
        + (f" The first agent process was killed inside charge {crash}." if crash else ""),
        style="dim",
    )
    for check in report.checks:
        mark, style = ("✓", "green") if check.ok else ("✗ FAILED:", "bold red")
        console.print(f"  {mark} {check.what}", style=style)
    failed = sum(not c.ok for c in report.checks)
    if report.ok:
        console.print(
            f"all {len(report.checks)} expectations met in {report.seconds:.1f} s",
            style="bold green",
        )
    else:
        console.print(f"{failed} of {len(report.checks)} expectations FAILED", style="bold red")


__all__ = ["INTRO", "RichProgress", "describe_faults", "render_agent_report"]

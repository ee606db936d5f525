"""``retrysafe report``: what the audit log says happened, as tables and a self-contained page.

:func:`load` reads an audit log (one JSON object per line, as the ``retrysafe.audit`` logger
writes it; a prefix added by a logging format, such as a timestamp, is skipped).
:func:`summarize` computes everything the report shows, :func:`render` prints it with rich
and :func:`html_page` writes one HTML file with inline SVG charts and no external assets or
scripts, so it opens anywhere (and can be mailed or attached to an incident).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrysafe._outcomes import Completion
from retrysafe.report._completion import OperationCompletion, by_operation, fates
from retrysafe.report._slo import (
    ClientMisuse,
    Event,
    Objective,
    Status,
    budget_series,
    evaluate,
    misuse_by_client,
    objective_for,
)
from retrysafe.telemetry import REQUEST_BUCKETS

OUTCOME_ORDER = (
    "executed",
    "replayed",
    "expired",
    "recovered",
    "unreplayable",
    "conflict_in_flight",
    "mismatch",
    "rejected",
    "store_error",
)
COLORS = {
    "executed": "#2b8a3e",
    "replayed": "#1971c2",
    "expired": "#5c940d",
    "recovered": "#e67700",
    "unreplayable": "#862e9c",
    "conflict_in_flight": "#f08c00",
    "mismatch": "#c2255c",
    "rejected": "#868e96",
    "store_error": "#c92a2a",
}
DEFAULT_OBJECTIVE = Objective()


@dataclass
class Log:
    """The audit records of a file, and how many lines were not audit records."""

    records: list[dict[str, Any]]
    skipped: int = 0


def parse_lines(lines: Iterable[str]) -> Log:
    out, skipped = [], 0
    for line in lines:
        start = line.find("{")
        if start < 0:
            if line.strip():
                skipped += 1
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            skipped += 1
            continue
        if isinstance(doc, dict) and "outcome" in doc and isinstance(doc.get("ts"), int | float):
            out.append(doc)
        else:
            skipped += 1
    out.sort(key=lambda d: float(d["ts"]))
    return Log(out, skipped)


def load(path: str | Path) -> Log:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_lines(f)


@dataclass
class OperationStats:
    outcomes: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the durations (None when there are none)."""
        if not self.durations:
            return None
        data = sorted(self.durations)
        rank = max(1, math.ceil(q / 100 * len(data)))
        return data[rank - 1]


@dataclass
class Summary:
    records: list[dict[str, Any]]
    skipped: int
    now: float
    objectives: Sequence[Objective]
    operations: dict[str, OperationStats]
    attempts: Counter[int]  # attempt number -> decisions carrying it
    decisions_per_key: Counter[int]  # n -> keys seen in n decisions
    replays: int
    billable: int
    cost_spent: dict[str, float]
    cost_avoided: dict[str, float]
    slo: list[Status]
    misuse: list[ClientMisuse] = field(default_factory=list)  # worst clients first
    completion: dict[str, OperationCompletion] = field(default_factory=dict)  # keys, by verdict

    @property
    def total(self) -> int:
        return len(self.records)

    def outcome_total(self, outcome: str) -> int:
        return sum(s.outcomes[outcome] for s in self.operations.values())


def summarize(log: Log, objectives: Sequence[Objective] = (), now: float | None = None) -> Summary:
    """Everything the report shows. ``now`` defaults to the last record's time (or the clock)."""
    records = log.records
    if now is None:
        now = float(records[-1]["ts"]) if records else time.time()
    objectives = tuple(objectives) or (DEFAULT_OBJECTIVE,)
    operations: dict[str, OperationStats] = defaultdict(OperationStats)
    attempts: Counter[int] = Counter()
    per_key: Counter[tuple[str, str, str]] = Counter()
    spent: dict[str, float] = defaultdict(float)
    avoided: dict[str, float] = defaultdict(float)
    replays = billable = 0
    for doc in records:
        op = str(doc.get("operation", ""))
        outcome = str(doc["outcome"])
        stats = operations[op]
        stats.outcomes[outcome] += 1
        duration = doc.get("duration_s")
        if isinstance(duration, int | float):
            stats.durations.append(float(duration))
        attempt = doc.get("attempt")
        if isinstance(attempt, int):
            attempts[attempt] += 1
        if doc.get("key"):
            per_key[(op, str(doc.get("scope", "")), str(doc["key"]))] += 1
        raw_cost = doc.get("cost")
        cost: dict[str, Any] = raw_cost if isinstance(raw_cost, dict) else {}
        if outcome == "replayed":
            replays += 1
            for unit, amount in cost.items():
                avoided[unit] += _number(amount)
        elif doc.get("billable"):
            billable += 1
            for unit, amount in cost.items():
                spent[unit] += _number(amount)
    events = [Event.from_audit(d) for d in records]
    window = max(o.window_s for o in objectives)
    return Summary(
        records=records,
        skipped=log.skipped,
        now=now,
        objectives=objectives,
        operations=dict(sorted(operations.items())),
        attempts=attempts,
        decisions_per_key=Counter(per_key.values()),
        replays=replays,
        billable=billable,
        cost_spent=dict(spent),
        cost_avoided=dict(avoided),
        slo=evaluate(events, objectives, now),
        misuse=misuse_by_client(events, now, window),
        completion=by_operation(
            fates((e.ts, e.operation, e.client, e.key, e.outcome, e.status) for e in events)
        ),
    )


def _number(value: object) -> float:
    """A cost amount from a log line; anything that is not a finite number counts as 0."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


# -- tables ----------------------------------------------------------------------------------


def _fmt_cost(amounts: dict[str, float]) -> str:
    return ", ".join(f"{amount:,.6g} {unit}" for unit, amount in sorted(amounts.items())) or "-"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _window(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:g}d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:g}h"
    return f"{seconds / 60:g}m"


def _client(identity: str) -> str:
    """A client identity short enough for a table: hashes are cut, run ids kept."""
    if len(identity) == 64 and all(c in "0123456789abcdef" for c in identity):
        return identity[:12] + "…"
    return identity or "(none)"


def render(summary: Summary, console: Any) -> None:
    """Print the report as rich tables on ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table

    console.print(
        f"[bold]retrysafe report[/bold]: {summary.total} decisions"
        + (f", {summary.skipped} lines skipped (not audit records)" if summary.skipped else "")
    )
    outcomes = [o for o in OUTCOME_ORDER if summary.outcome_total(o)]
    table = Table(title="Outcomes by operation")
    table.add_column("operation")
    for outcome in outcomes:
        # "store error" wraps at the space in a narrow terminal; "store_error" became "store_err…"
        table.add_column(outcome.replace("_", " "), justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    for op, stats in summary.operations.items():
        table.add_row(
            op,
            *(str(stats.outcomes[o]) for o in outcomes),
            _fmt_s(stats.percentile(50)),
            _fmt_s(stats.percentile(99)),
        )
    console.print(table)

    retries = Table(title="Retries")
    retries.add_column("what")
    retries.add_column("count", justify="right")
    for attempt in sorted(summary.attempts):
        retries.add_row(f"decisions on attempt {attempt}", str(summary.attempts[attempt]))
    for n in sorted(summary.decisions_per_key):
        retries.add_row(f"keys seen {n} time(s)", str(summary.decisions_per_key[n]))
    console.print(retries)

    money = Table(title="Replays and cost")
    money.add_column("what")
    money.add_column("value", justify="right")
    money.add_row("replays (not billed)", str(summary.replays))
    money.add_row("cost avoided by replays", _fmt_cost(summary.cost_avoided))
    money.add_row("billable executions", str(summary.billable))
    money.add_row("cost of executions", _fmt_cost(summary.cost_spent))
    console.print(money)

    conflicts = Table(title="Conflicts and client errors")
    conflicts.add_column("operation")
    for name in ("conflict_in_flight", "mismatch", "rejected", "unreplayable"):
        conflicts.add_column(name, justify="right")
    for op, stats in summary.operations.items():
        conflicts.add_row(
            op,
            *(
                str(stats.outcomes[n])
                for n in ("conflict_in_flight", "mismatch", "rejected", "unreplayable")
            ),
        )
    console.print(conflicts)

    completion = Table(title=COMPLETION_TITLE)
    for name in COMPLETION_HEADERS:
        completion.add_column(name, justify="left" if name == "operation" else "right")
    for row in _completion_rows(summary):
        completion.add_row(*row)
    console.print(completion)

    # Two tables, not one ten columns wide: at 80 columns (a pipe, CI) one would squeeze every
    # cell to "avai…" and "99.9…".
    slo = Table(title="SLO status")
    for name in ("operation", "SLI", "actual", "target", "budget left"):
        slo.add_column(name, justify="left" if name in ("operation", "SLI") else "right")
    burn_windows = ("5m", "30m", "1h", "6h", "3d")
    burn = Table(title="Burn rates (1.00 spends the budget exactly over the window)")
    burn.add_column("operation")
    burn.add_column("SLI")
    for name in burn_windows:
        burn.add_column(name, justify="right")
    for status in summary.slo:
        for ind in status.indicators:
            style = "green" if ind.met else "red"
            label = ind.name
            if ind.name == "latency" and status.objective.latency_s is not None:
                label = f"latency ≤ {_fmt_s(status.objective.latency_s)}"
            burns = {_window(w): b for w, b in ind.burn.items()}
            slo.add_row(
                status.operation,
                label,
                "-" if ind.ratio is None else f"{ind.ratio:.3%}",
                f"{ind.target:.3%}",
                f"[{style}]{ind.budget_remaining:.1%}[/{style}]",
            )
            burn.add_row(
                status.operation, label, *(f"{burns.get(w, 0.0):.1f}" for w in burn_windows)
            )
    console.print(slo)
    console.print(burn)

    if summary.misuse:
        misuse = Table(title="Key misuse by client (mismatches and in-flight conflicts)")
        for name in ("client", "operation", "misused", "keyed", "share"):
            misuse.add_column(name, justify="left" if name in ("client", "operation") else "right")
        for m in summary.misuse:
            misuse.add_row(
                _client(m.client), m.operation, str(m.misuse), str(m.keyed), f"{m.ratio:.2%}"
            )
        console.print(misuse)

    alerts = [(s.operation, sli, a) for s in summary.slo for sli, a in s.alerts]
    if not alerts:
        console.print("[green]No burn-rate alerts.[/green]")
        return
    table = Table(title="Burn-rate alerts")
    for name in ("severity", "operation", "SLI", "windows", "burn (long/short)", "factor"):
        table.add_column(name)
    for op, sli, alert in alerts:
        w = alert.window
        table.add_row(
            f"[bold red]{w.severity}[/bold red]" if w.severity == "page" else w.severity,
            op,
            sli,
            f"{_window(w.long_s)}/{_window(w.short_s)}",
            f"{alert.long_burn:.1f}/{alert.short_burn:.1f}",
            f"{w.factor:g}",
        )
    console.print(table)


COMPLETION_TITLE = "Completion by key (a retry answered by its replay is one success)"
COMPLETION_HEADERS = ("operation", "keys", "once", "retried", "duplicated", "failed", "rejected")


def _completion_rows(summary: Summary) -> list[list[str]]:
    """Per operation: keys, completed exactly once (of which retried), and the failures."""
    rows = []
    for op, counts in summary.completion.items():
        v = counts.verdicts
        rows.append(
            [
                op,
                str(counts.keys),
                str(v[Completion.ONCE]),
                str(counts.retried),
                str(v[Completion.DUPLICATED]),
                str(v[Completion.FAILED]),
                str(v[Completion.REJECTED]),
            ]
        )
    return rows


# -- the HTML page ---------------------------------------------------------------------------

_W, _H = 720, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 16, 16, 40


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _svg(title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>" + "".join(body) + "</svg>"
    )


def _axes(y_max: float, y_label: str, fmt: str = "{:g}") -> list[str]:
    x0, y0, x1, y1 = _PAD_L, _H - _PAD_B, _W - _PAD_R, _PAD_T
    out = [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>',
        f'<text x="12" y="{(y0 + y1) / 2:.0f}" font-size="11" '
        f'transform="rotate(-90 12 {(y0 + y1) / 2:.0f})" text-anchor="middle">'
        f"{_esc(y_label)}</text>",
    ]
    for i in range(5):
        v = y_max * i / 4
        y = y0 - (y0 - y1) * i / 4
        out.append(
            f'<text x="{x0 - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_esc(fmt.format(v))}</text>"
        )
        if i:
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#ddd"/>')
    return out


def _time_label(ts: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(ts))


def outcomes_chart(records: Sequence[dict[str, Any]], buckets: int = 40) -> str:
    """Stacked bars: decisions per time bucket, coloured by outcome."""
    if not records:
        return _svg("Outcomes over time (no data)", [])
    t0, t1 = float(records[0]["ts"]), float(records[-1]["ts"])
    span = max(t1 - t0, 1.0)
    counts: list[Counter[str]] = [Counter() for _ in range(buckets)]
    for doc in records:
        i = min(int((float(doc["ts"]) - t0) / span * buckets), buckets - 1)
        counts[i][str(doc["outcome"])] += 1
    peak = max(sum(c.values()) for c in counts) or 1
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    bar_w = plot_w / buckets
    body = _axes(peak, "decisions", "{:.0f}")
    for i, c in enumerate(counts):
        y = float(_H - _PAD_B)
        for outcome in OUTCOME_ORDER:
            n = c.get(outcome, 0)
            if not n:
                continue
            h = n / peak * plot_h
            y -= h
            body.append(
                f'<rect x="{_PAD_L + i * bar_w + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{h:.1f}" fill="{COLORS.get(outcome, "#999")}">'
                f"<title>{_esc(outcome)}: {n}</title></rect>"
            )
    body.append(
        f'<text x="{_PAD_L}" y="{_H - 22}" font-size="10">{_esc(_time_label(t0))} UTC</text>'
    )
    body.append(
        f'<text x="{_W - _PAD_R}" y="{_H - 22}" font-size="10" text-anchor="end">'
        f"{_esc(_time_label(t1))} UTC</text>"
    )
    x = float(_PAD_L)
    present = {str(d["outcome"]) for d in records}
    for outcome in OUTCOME_ORDER:
        if outcome not in present:
            continue
        body.append(
            f'<rect x="{x:.0f}" y="{_H - 12}" width="10" height="10" fill="{COLORS[outcome]}"/>'
            f'<text x="{x + 13:.0f}" y="{_H - 3}" font-size="10">{_esc(outcome)}</text>'
        )
        x += 18 + 6.2 * len(outcome)
    return _svg("Outcomes over time", body)


def latency_chart(durations: Sequence[float]) -> str:
    """Histogram of decision durations over the metric's bucket boundaries."""
    bounds = list(REQUEST_BUCKETS)
    counts = [0] * (len(bounds) + 1)
    for d in durations:
        i = next((j for j, b in enumerate(bounds) if d <= b), len(bounds))
        counts[i] += 1
    labels = [f"≤{_fmt_s(b)}" for b in bounds] + [f">{_fmt_s(bounds[-1])}"]
    peak = max(counts) or 1
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    bar_w = plot_w / len(counts)
    body = _axes(peak, "decisions", "{:.0f}")
    for i, (n, label) in enumerate(zip(counts, labels, strict=True)):
        h = n / peak * plot_h
        x = _PAD_L + i * bar_w
        body.append(
            f'<rect x="{x + 2:.1f}" y="{_H - _PAD_B - h:.1f}" width="{bar_w - 4:.1f}" '
            f'height="{h:.1f}" fill="#1971c2"><title>{_esc(label)}: {n}</title></rect>'
        )
        body.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{_H - _PAD_B + 14}" font-size="9" '
            f'text-anchor="middle">{_esc(label)}</text>'
        )
    return _svg("Latency distribution", body)


def budget_chart(summary: Summary, points: int = 60) -> str:
    """Error budget remaining (availability) over the log's time span, one line per operation."""
    if not summary.records or not summary.slo:
        return _svg("Error budget remaining (no data)", [])
    events = [Event.from_audit(d) for d in summary.records]
    t0 = float(summary.records[0]["ts"])
    lines: list[tuple[str, list[tuple[float, float]]]] = []
    for status in summary.slo:
        objective = objective_for(status.operation, summary.objectives) or DEFAULT_OBJECTIVE
        own = [e for e in events if e.operation == status.operation]
        pinned = Objective(status.operation, objective.success, None, 0.99, objective.window_s)
        lines.append((status.operation, budget_series(own, pinned, t0, summary.now, points)))
    low = min(0.0, *(b for _, series in lines for _, b in series))
    low = max(low, -5.0)  # clip deep overspend so the useful range stays readable
    span_t = max(summary.now - t0, 1.0)
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def xy(t: float, b: float) -> str:
        x = _PAD_L + (t - t0) / span_t * plot_w
        y = _PAD_T + (1.0 - max(b, low)) / (1.0 - low) * plot_h
        return f"{x:.1f},{y:.1f}"

    body = [
        f'<text x="{_PAD_L - 4}" y="{_PAD_T + 4}" font-size="10" text-anchor="end">100%</text>',
        f'<text x="{_PAD_L - 4}" y="{_H - _PAD_B + 4}" font-size="10" text-anchor="end">'
        f"{low:.0%}</text>",
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}" stroke="#444"/>',
        f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" y2="{_H - _PAD_B}" '
        'stroke="#444"/>',
    ]
    zero_y = _PAD_T + 1.0 / (1.0 - low) * plot_h
    body.append(
        f'<line x1="{_PAD_L}" y1="{zero_y:.1f}" x2="{_W - _PAD_R}" y2="{zero_y:.1f}" '
        'stroke="#c92a2a" stroke-dasharray="4 3"><title>budget exhausted</title></line>'
    )
    body.append(
        f'<text x="{_PAD_L - 4}" y="{zero_y + 4:.1f}" font-size="10" text-anchor="end">0%</text>'
    )
    palette = ["#1971c2", "#2b8a3e", "#e67700", "#862e9c", "#c2255c", "#0c8599"]
    for i, (op, series) in enumerate(lines):
        color = palette[i % len(palette)]
        pts = " ".join(xy(t, b) for t, b in series)
        body.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{_esc(op)}</title></polyline>"
        )
        body.append(
            f'<text x="{_PAD_L + 8}" y="{_H - 8 - 12 * (len(lines) - 1 - i)}" font-size="10" '
            f'fill="{color}">{_esc(op)}</text>'
        )
    return _svg("Error budget remaining", body)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.bad{color:#c92a2a;font-weight:bold}.good{color:#2b8a3e}
figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.3em}
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_BURN_HEADERS = ("burn 5m", "burn 30m", "burn 1h", "burn 6h", "burn 3d")


def html_page(summary: Summary) -> str:
    """One self-contained XHTML-compatible page: tables and inline SVG, no scripts or links."""
    outcomes = [o for o in OUTCOME_ORDER if summary.outcome_total(o)]
    out_rows = [
        [_esc(op), *(str(s.outcomes[o]) for o in outcomes)] for op, s in summary.operations.items()
    ]
    slo_rows = []
    for status in summary.slo:
        for ind in status.indicators:
            cls = "good" if ind.met else "bad"
            slo_rows.append(
                [
                    _esc(status.operation),
                    _esc(ind.name),
                    "-" if ind.ratio is None else f"{ind.ratio:.3%}",
                    f"{ind.target:.3%}",
                    f'<span class="{cls}">{ind.budget_remaining:.1%}</span>',
                    *(f"{b:.2f}" for _, b in sorted(ind.burn.items())),
                ]
            )
    alert_rows = [
        [
            f'<span class="bad">{_esc(a.window.severity)}</span>',
            _esc(s.operation),
            _esc(sli),
            f"{_window(a.window.long_s)}/{_window(a.window.short_s)}",
            f"{a.long_burn:.1f}/{a.short_burn:.1f}",
        ]
        for s in summary.slo
        for sli, a in s.alerts
    ]
    misuse_rows = [
        [_esc(_client(m.client)), _esc(m.operation), str(m.misuse), str(m.keyed), f"{m.ratio:.2%}"]
        for m in summary.misuse
    ]
    durations = [d for s in summary.operations.values() for d in s.durations]
    money = [
        ["replays (not billed)", str(summary.replays)],
        ["cost avoided by replays", _esc(_fmt_cost(summary.cost_avoided))],
        ["billable executions", str(summary.billable)],
        ["cost of executions", _esc(_fmt_cost(summary.cost_spent))],
    ]
    retries = [
        [f"decisions on attempt {a}", str(n)] for a, n in sorted(summary.attempts.items())
    ] + [[f"keys seen {k} time(s)", str(n)] for k, n in sorted(summary.decisions_per_key.items())]
    parts = [
        "<!DOCTYPE html>",
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>',
        "<title>retrysafe report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>retrysafe report</h1>",
        f"<p>{summary.total} decisions, as of {_esc(_time_label(summary.now))} UTC.</p>",
        "<h2>Outcomes</h2>",
        _table(["operation", *outcomes], out_rows),
        "<figure><figcaption>Outcomes over time</figcaption>",
        outcomes_chart(summary.records),
        "</figure>",
        "<figure><figcaption>Latency distribution</figcaption>",
        latency_chart(durations),
        "</figure>",
        "<h2>Retries</h2>",
        _table(["what", "count"], retries),
        "<h2>Replays and cost</h2>",
        _table(["what", "value"], money),
        f"<h2>{_esc(COMPLETION_TITLE)}</h2>",
        _table(
            COMPLETION_HEADERS,
            ([_esc(op), *rest] for op, *rest in _completion_rows(summary)),
        ),
        "<h2>SLO status</h2>",
        _table(
            [*("operation", "SLI", "actual", "target", "budget left"), *_BURN_HEADERS],
            slo_rows,
        ),
        "<figure><figcaption>Error budget remaining</figcaption>",
        budget_chart(summary),
        "</figure>",
        "<h2>Key misuse by client</h2>",
        _table(["client", "operation", "misused", "keyed", "share"], misuse_rows)
        if misuse_rows
        else '<p class="good">No key misuse.</p>',
        "<h2>Burn-rate alerts</h2>",
        _table(["severity", "operation", "SLI", "windows", "burn (long/short)"], alert_rows)
        if alert_rows
        else '<p class="good">No burn-rate alerts.</p>',
        "</body></html>",
    ]
    return "\n".join(parts)


__all__ = [
    "Log",
    "Summary",
    "html_page",
    "load",
    "parse_lines",
    "render",
    "summarize",
]

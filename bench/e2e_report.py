"""What ``bench/e2e.py`` measured, as Markdown tables, and the check on execution counts.

One table per server (and worker count) and connection count; one row per variant. Each
figure is the median over rounds; the share of the bare app is the median of the per-round
ratios (a noisy minute slows a variant and the bare app of the same round alike).

The execution counts prove what each run was: a *first* run's handler ran once per answered
request (give or take the requests still in flight when the run stopped, at most one per
connection, and less any request answered with an error), a *replay* run's never (the bare
app, which has no idempotency, runs for every request: it is the reference).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from e2e_load import Load


@dataclass(frozen=True)
class Measurement:
    server: str  # ServerKind.name
    variant: str
    connections: int
    mode: str  # "first" or "replay"
    round: int
    load: Load
    executions: int  # handler executions the counter saw during the run
    replays: bool  # the variant replays (every variant but the bare app)
    key: str  # the run's key (first: the start of every key it sent)

    def problem(self) -> str | None:
        """Why the execution count contradicts the run, or None."""
        done, errors, ran = self.load.requests, self.load.errors, self.executions
        if done == 0:
            return "no request answered"
        if self.mode == "replay" and self.replays:
            return None if ran == 0 else f"replay ran the handler {ran} times"
        if not done - errors <= ran <= done + self.connections:
            return f"{done} answered ({errors} errors) but the handler ran {ran} times"
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "server": self.server,
            "variant": self.variant,
            "connections": self.connections,
            "mode": self.mode,
            "round": self.round,
            "requests": self.load.requests,
            "seconds": self.load.seconds,
            "rps": self.load.rps,
            "errors": self.load.errors,
            "p50_ms": self.load.p50_ms,
            "p99_ms": self.load.p99_ms,
            "executions": self.executions,
            "problem": self.problem(),
        }


def _median(values: Iterable[float]) -> float:
    got = list(values)
    return statistics.median(got) if got else float("nan")


def table(
    measurements: list[Measurement], server: str, connections: int, titles: dict[str, str]
) -> list[str]:
    """The Markdown table of one server kind at one connection count."""
    mine = [m for m in measurements if m.server == server and m.connections == connections]
    variants = list(dict.fromkeys(m.variant for m in mine))
    by = {(m.variant, m.mode, m.round): m for m in mine}

    def runs(variant: str, mode: str) -> list[Measurement]:
        return [m for m in mine if m.variant == variant and m.mode == mode]

    def share(variant: str, mode: str) -> str:
        ratios = [
            m.load.rps / base.load.rps
            for m in runs(variant, mode)
            if (base := by.get(("bare", mode, m.round))) and base.load.rps
        ]
        return f"{_median(ratios):.0%}" if ratios else "–"

    lines = [
        f"**{server}, {connections} connection{'s' if connections > 1 else ''}**",
        "",
        "| variant | first req/s | first p50 / p99 ms | replay req/s | replay p50 / p99 ms "
        "| share of bare (first / replay) | handler runs per first / in replays | errors |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for variant in variants:
        first, replay = runs(variant, "first"), runs(variant, "replay")
        answered = sum(m.load.requests for m in first)
        per_first = sum(m.executions for m in first) / answered if answered else float("nan")
        problems = [p for m in first + replay if (p := m.problem())]
        lines.append(
            f"| {titles.get(variant, variant)} "
            f"| {_median(m.load.rps for m in first):,.0f} "
            f"| {_median(m.load.p50_ms for m in first):.2f} / "
            f"{_median(m.load.p99_ms for m in first):.2f} "
            f"| {_median(m.load.rps for m in replay):,.0f} "
            f"| {_median(m.load.p50_ms for m in replay):.2f} / "
            f"{_median(m.load.p99_ms for m in replay):.2f} "
            f"| {share(variant, 'first')} / {share(variant, 'replay')} "
            f"| {per_first:.2f} / {sum(m.executions for m in replay):,}"
            f"{' ✗ ' + problems[0] if problems else ''} "
            f"| {sum(m.load.errors for m in first + replay):,} |"
        )
    return lines

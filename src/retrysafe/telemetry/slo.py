"""Service-level objectives from the audit log (SPEC 35): pure computation, no I/O, no clock.

An :class:`Objective` says, for the operations matching a pattern, what fraction of requests
must succeed and what fraction must be faster than a latency threshold, over a rolling window
(30 days). :func:`evaluate` turns audit events into, per operation, the error budget left and
the burn rates of the multi-window alerts of the Google SRE workbook ("Alerting on SLOs"):

======== =========== ============ ======
severity long window short window factor
======== =========== ============ ======
page     1 h         5 m          14.4
page     6 h         30 m         6
ticket   3 d         6 h          1
======== =========== ============ ======

An alert fires when the burn rate over *both* its windows exceeds the factor: the long window
says enough budget is gone to matter, the short one that it is still burning. A burn rate of
1 spends the budget exactly over the SLO window; 14.4 spends 2 % of a 30-day budget in an hour.

What consumes the budget (:func:`classify`):

- **bad**: ``store_error`` (the idempotency layer could not reach its store, whether it failed
  closed with 503 or failed open and served the request unprotected), ``conflict_in_flight``
  (the first attempt did not finish within the wait bound, so the duplicate got a 409), and any
  response with status >= 500 (including a handler that raised, recorded as 500).
- **client errors**, excluded from the SLI and reported on their own: ``mismatch`` (the client
  reused a key for another request) and ``rejected`` (malformed or missing key, body too large).
  A client that misbehaves must not page the service's owners.
- **good**: everything else — ``executed``, ``replayed``, ``expired``, ``recovered`` with a
  status below 500 (4xx from the handler are the handler's answer, served as designed), and
  ``unreplayable`` (the documented answer for a result that could not be kept).

Latency counts over the same valid events (good and bad): an event is slow when its
``duration_s`` exceeds the objective's threshold.
"""

from __future__ import annotations

import bisect
import enum
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0


class Kind(enum.Enum):
    GOOD = "good"
    BAD = "bad"
    CLIENT_ERROR = "client_error"


_BAD_OUTCOMES = frozenset({"store_error", "conflict_in_flight"})
_CLIENT_OUTCOMES = frozenset({"mismatch", "rejected"})


def classify(outcome: str, status: int | None) -> Kind:
    """Whether an event consumes the error budget (see the module docstring)."""
    if outcome in _CLIENT_OUTCOMES:
        return Kind.CLIENT_ERROR
    if outcome in _BAD_OUTCOMES or (status is not None and status >= 500):
        return Kind.BAD
    return Kind.GOOD


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One multi-window alert: fires when both windows burn faster than ``factor``."""

    severity: str
    long_s: float
    short_s: float
    factor: float


BURN_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("page", 1 * HOUR, 5 * MINUTE, 14.4),
    BurnWindow("page", 6 * HOUR, 30 * MINUTE, 6.0),
    BurnWindow("ticket", 3 * DAY, 6 * HOUR, 1.0),
)


@dataclass(frozen=True, slots=True)
class Objective:
    """Targets for the operations matching ``operation`` (an ``fnmatch`` pattern).

    ``success`` and ``latency_target`` are fractions in (0, 1), e.g. 0.999; ``latency_s`` is
    the threshold in seconds (None: no latency objective).
    """

    operation: str = "*"
    success: float = 0.999
    latency_s: float | None = 1.0
    latency_target: float = 0.99
    window_s: float = 30 * DAY

    def __post_init__(self) -> None:
        for name in ("success", "latency_target"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"{name} must be a fraction strictly between 0 and 1: {value!r}")
        if self.latency_s is not None and not (
            math.isfinite(self.latency_s) and self.latency_s > 0
        ):
            raise ValueError(f"latency_s must be a positive number of seconds: {self.latency_s!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a positive number of seconds: {self.window_s!r}")

    def matches(self, operation: str) -> bool:
        return fnmatch.fnmatchcase(operation, self.operation)


@dataclass(frozen=True, slots=True)
class Event:
    """What the SLO math needs from one audit line."""

    ts: float
    operation: str
    outcome: str
    status: int | None = None
    duration_s: float | None = None

    @property
    def kind(self) -> Kind:
        return classify(self.outcome, self.status)

    @classmethod
    def from_audit(cls, doc: Mapping[str, Any]) -> Event:
        status = doc.get("status")
        duration = doc.get("duration_s")
        return cls(
            float(doc["ts"]),
            str(doc.get("operation", "")),
            str(doc["outcome"]),
            int(status) if isinstance(status, int | float) else None,
            float(duration) if isinstance(duration, int | float) else None,
        )


@dataclass(frozen=True, slots=True)
class Alert:
    window: BurnWindow
    long_burn: float
    short_burn: float


@dataclass(frozen=True, slots=True)
class Indicator:
    """One SLI of one operation over the objective's window, ending at ``now``."""

    name: str  # "availability" or "latency"
    target: float
    good: int
    bad: int
    budget_remaining: float  # 1 = untouched, 0 = spent, negative = overspent
    burn: Mapping[float, float]  # window seconds -> burn rate
    alerts: tuple[Alert, ...]

    @property
    def valid(self) -> int:
        return self.good + self.bad

    @property
    def ratio(self) -> float | None:
        """Fraction of good events, None when there were none."""
        return self.good / self.valid if self.valid else None

    @property
    def met(self) -> bool:
        return self.budget_remaining >= 0


@dataclass(frozen=True, slots=True)
class Status:
    """The SLO status of one operation."""

    operation: str
    objective: Objective
    availability: Indicator
    latency: Indicator | None
    client_errors: int
    by_outcome: Mapping[str, int] = field(default_factory=dict)

    @property
    def alerts(self) -> tuple[tuple[str, Alert], ...]:
        found = [("availability", a) for a in self.availability.alerts]
        if self.latency is not None:
            found += [("latency", a) for a in self.latency.alerts]
        return tuple(found)


def burn_rate(bad: int, valid: int, target: float) -> float:
    """How fast the budget burns: observed error rate over the allowed one (0 with no events)."""
    if valid == 0 or bad == 0:
        return 0.0
    return (bad / valid) / (1.0 - target)


def budget_remaining(bad: int, valid: int, target: float) -> float:
    """Share of the error budget left: 1 - error rate / allowed error rate (1 with no events)."""
    return 1.0 - burn_rate(bad, valid, target)


class _Series:
    """Events of one operation sorted by time, with prefix sums for O(log n) window counts."""

    def __init__(self, times: Sequence[float], bad: Sequence[bool]) -> None:
        self.times = list(times)
        self.bad_prefix = [0]
        for b in bad:
            self.bad_prefix.append(self.bad_prefix[-1] + int(b))

    def counts(self, start: float, end: float) -> tuple[int, int]:
        """(bad, valid) for events with start < ts <= end."""
        lo = bisect.bisect_right(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        return self.bad_prefix[hi] - self.bad_prefix[lo], hi - lo


def _indicator(name: str, target: float, series: _Series, window_s: float, now: float) -> Indicator:
    bad, valid = series.counts(now - window_s, now)
    windows = sorted({w for bw in BURN_WINDOWS for w in (bw.long_s, bw.short_s)})
    burn = {w: burn_rate(*series.counts(now - w, now), target) for w in windows}
    alerts = tuple(
        Alert(bw, burn[bw.long_s], burn[bw.short_s])
        for bw in BURN_WINDOWS
        if burn[bw.long_s] > bw.factor and burn[bw.short_s] > bw.factor
    )
    return Indicator(
        name, target, valid - bad, bad, budget_remaining(bad, valid, target), burn, alerts
    )


def objective_for(operation: str, objectives: Sequence[Objective]) -> Objective | None:
    """The first objective whose pattern matches ``operation``."""
    return next((o for o in objectives if o.matches(operation)), None)


def evaluate(events: Iterable[Event], objectives: Sequence[Objective], now: float) -> list[Status]:
    """The SLO status at ``now`` of every operation that has events and a matching objective."""
    by_op: dict[str, list[Event]] = {}
    for event in events:
        if event.ts <= now:
            by_op.setdefault(event.operation, []).append(event)
    out: list[Status] = []
    for operation in sorted(by_op):
        objective = objective_for(operation, objectives)
        if objective is None:
            continue
        evs = sorted(by_op[operation], key=lambda e: e.ts)
        in_window = [e for e in evs if e.ts > now - objective.window_s]
        outcomes: dict[str, int] = {}
        for e in in_window:
            outcomes[e.outcome] = outcomes.get(e.outcome, 0) + 1
        valid = [e for e in evs if e.kind is not Kind.CLIENT_ERROR]
        times = [e.ts for e in valid]
        availability = _indicator(
            "availability",
            objective.success,
            _Series(times, [e.kind is Kind.BAD for e in valid]),
            objective.window_s,
            now,
        )
        latency = None
        if objective.latency_s is not None:
            threshold = objective.latency_s
            slow = [e.duration_s is not None and e.duration_s > threshold for e in valid]
            latency = _indicator(
                "latency", objective.latency_target, _Series(times, slow), objective.window_s, now
            )
        client = sum(1 for e in in_window if e.kind is Kind.CLIENT_ERROR)
        out.append(Status(operation, objective, availability, latency, client, outcomes))
    return out


def budget_series(
    events: Sequence[Event], objective: Objective, start: float, end: float, points: int
) -> list[tuple[float, float]]:
    """Budget remaining (availability) at ``points`` evenly spaced times in [start, end].

    Each point looks back over the objective's window, as :func:`evaluate` would at that time.
    """
    valid = sorted(
        (e for e in events if e.kind is not Kind.CLIENT_ERROR and objective.matches(e.operation)),
        key=lambda e: e.ts,
    )
    series = _Series([e.ts for e in valid], [e.kind is Kind.BAD for e in valid])
    if points < 2 or end <= start:
        bad, n = series.counts(end - objective.window_s, end)
        return [(end, budget_remaining(bad, n, objective.success))]
    step = (end - start) / (points - 1)
    out = []
    for i in range(points):
        t = start + i * step
        bad, n = series.counts(t - objective.window_s, t)
        out.append((t, budget_remaining(bad, n, objective.success)))
    return out


def parse_objective(text: str) -> Objective:
    """``PATTERN=SUCCESS%[,THRESHOLD@LATENCY%][,WINDOW]``, e.g. ``POST /pay*=99.9,0.3s@95,30d``.

    SUCCESS and LATENCY are percentages; THRESHOLD is seconds (``s`` or ``ms`` suffix allowed);
    WINDOW is days (``d``) or hours (``h``). The pattern is everything before the last ``=``.
    """
    pattern, sep, spec = text.rpartition("=")
    if not sep or not pattern.strip():
        raise ValueError(f"an objective looks like 'POST /pay*=99.9,0.3s@95', not {text!r}")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"objective {text!r} has no success target")
    try:
        options: dict[str, Any] = {"success": _percent(parts[0])}
        options["latency_s"] = None
        for part in parts[1:]:
            if "@" in part:
                threshold, _, pct = part.partition("@")
                options["latency_s"] = _seconds(threshold)
                options["latency_target"] = _percent(pct)
            elif part.endswith("d"):
                options["window_s"] = float(part[:-1]) * DAY
            elif part.endswith("h"):
                options["window_s"] = float(part[:-1]) * HOUR
            else:
                raise ValueError(f"unknown objective part {part!r}")
    except ValueError as exc:
        raise ValueError(f"bad objective {text!r}: {exc}") from None
    return Objective(pattern.strip(), **options)


def _percent(text: str) -> float:
    # round: 99.9 / 100 is 0.9990000000000001 in binary floating point
    return round(float(text.strip().rstrip("%")) / 100, 12)


def _seconds(text: str) -> float:
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s"))


__all__ = [
    "BURN_WINDOWS",
    "Alert",
    "BurnWindow",
    "Event",
    "Indicator",
    "Kind",
    "Objective",
    "Status",
    "budget_remaining",
    "budget_series",
    "burn_rate",
    "classify",
    "evaluate",
    "objective_for",
    "parse_objective",
]

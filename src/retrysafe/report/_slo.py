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

**Key correctness** is a second, separate SLI over every keyed decision (all but ``rejected``):
the share that were not key misuse. Misuse is ``mismatch`` (a key reused for another request)
and ``conflict_in_flight`` (a duplicate that did not wait for the first attempt): both say the
*client* — usually an agent's retry logic — is wrong. It has its own objective
(``Objective.correctness``), budget and burn-rate alerts, so misuse pages whoever owns the
clients without burning the service's availability budget for mismatches. (A 409 counts in
both: it is the client's misuse, and also a first attempt slower than the wait bound.)
:func:`misuse_by_client` breaks it down per client identity (the scope's opaque hash, or the
agent run id of tool calls).

**Completion** (SPEC 35a) is a third SLI, over keys rather than decisions: the share of
logical operations that completed exactly once (:mod:`retrysafe.report._completion` has the
rule). A first attempt that ran and a retry answered by its replay are one good key, not a bad
and a good decision. Each key counts once, at its last decision.
"""

from __future__ import annotations

import bisect
import enum
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrysafe._outcomes import Completion
from retrysafe.report._completion import fates

DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0


class Kind(enum.Enum):
    GOOD = "good"
    BAD = "bad"
    CLIENT_ERROR = "client_error"


_BAD_OUTCOMES = frozenset({"store_error", "conflict_in_flight"})
_CLIENT_OUTCOMES = frozenset({"mismatch", "rejected"})
MISUSE_OUTCOMES = frozenset({"mismatch", "conflict_in_flight"})
UNKEYED_OUTCOMES = frozenset({"rejected"})  # no usable key: not a key use at all


def is_misuse(outcome: str) -> bool:
    """A keyed decision that says the client used its key wrongly (the correctness SLI)."""
    return outcome in MISUSE_OUTCOMES


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
    correctness: float | None = 0.999  # key correctness target; None: not tracked
    completion: float | None = 0.999  # share of keys completed exactly once; None: not tracked

    def __post_init__(self) -> None:
        optional = [n for n in ("correctness", "completion") if getattr(self, n) is not None]
        names = ["success", "latency_target", *optional]
        for name in names:
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
    client: str = ""  # who used the key: the scope's opaque hash, or a tool call's run id
    key: str = ""  # the key as logged (raw or hashed); "" when the request had none

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
            str(doc.get("run_id") or doc.get("scope") or ""),
            str(doc.get("key") or ""),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    window: BurnWindow
    long_burn: float
    short_burn: float


@dataclass(frozen=True, slots=True)
class Indicator:
    """One SLI of one operation over the objective's window, ending at ``now``."""

    name: str  # "availability", "latency", "key correctness" or "completion"
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
    correctness: Indicator | None = None
    completion: Indicator | None = None

    @property
    def indicators(self) -> tuple[Indicator, ...]:
        found = (self.availability, self.latency, self.correctness, self.completion)
        return tuple(i for i in found if i)

    @property
    def alerts(self) -> tuple[tuple[str, Alert], ...]:
        return tuple((ind.name, a) for ind in self.indicators for a in ind.alerts)


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
        correctness = None
        if objective.correctness is not None:
            keyed = [e for e in evs if e.outcome not in UNKEYED_OUTCOMES]
            correctness = _indicator(
                "key correctness",
                objective.correctness,
                _Series([e.ts for e in keyed], [is_misuse(e.outcome) for e in keyed]),
                objective.window_s,
                now,
            )
        completion = None
        if objective.completion is not None:
            keys = sorted(
                fates((e.ts, e.operation, e.client, e.key, e.outcome, e.status) for e in evs),
                key=lambda f: f.last_ts,
            )
            completion = _indicator(
                "completion",
                objective.completion,
                _Series(
                    [f.last_ts for f in keys], [f.completion is not Completion.ONCE for f in keys]
                ),
                objective.window_s,
                now,
            )
        client = sum(1 for e in in_window if e.kind is Kind.CLIENT_ERROR)
        out.append(
            Status(
                operation,
                objective,
                availability,
                latency,
                client,
                outcomes,
                correctness,
                completion,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ClientMisuse:
    """Key misuse of one client on one operation, over a window."""

    client: str
    operation: str
    misuse: int
    keyed: int

    @property
    def ratio(self) -> float:
        return self.misuse / self.keyed if self.keyed else 0.0


def misuse_by_client(
    events: Iterable[Event], now: float, window_s: float, limit: int = 10
) -> list[ClientMisuse]:
    """The clients whose keys were misused most in ``(now - window_s, now]``, worst first.

    Only clients with at least one misuse are listed. A client is an opaque identity (a hash,
    a run id): this is for finding the agent or integration whose retry logic is wrong.
    """
    counts: dict[tuple[str, str], list[int]] = {}
    for e in events:
        if not (now - window_s < e.ts <= now) or e.outcome in UNKEYED_OUTCOMES:
            continue
        cell = counts.setdefault((e.client, e.operation), [0, 0])
        cell[0] += is_misuse(e.outcome)
        cell[1] += 1
    found = [ClientMisuse(c, op, bad, n) for (c, op), (bad, n) in counts.items() if bad]
    found.sort(key=lambda m: (-m.ratio, -m.misuse, m.client, m.operation))
    return found[:limit]


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
    """``PATTERN=SUCCESS%[,THRESHOLD@LATENCY%][,keys:CORRECT%][,once:ONCE%][,WINDOW]``, e.g.
    ``POST /pay*=99.9,300ms@95,keys:99.5,once:99.9,30d``.

    SUCCESS, LATENCY, CORRECT (the key correctness target) and ONCE (the share of keys
    completed exactly once) are percentages; THRESHOLD
    carries its unit (``300ms``, ``1.5s``): a bare number is refused, since it would silently
    mean seconds; WINDOW is days (``d``) or hours (``h``). The pattern is everything before the
    last ``=``.
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
            if part.startswith("keys:"):
                options["correctness"] = _percent(part.removeprefix("keys:"))
            elif part.startswith("once:"):
                options["completion"] = _percent(part.removeprefix("once:"))
            elif "@" in part:
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
    if not text.endswith("s"):
        raise ValueError(f"latency threshold {text!r} needs a unit: '{text}ms' or '{text}s'")
    return float(text[:-1])


__all__ = [
    "BURN_WINDOWS",
    "Alert",
    "BurnWindow",
    "ClientMisuse",
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
    "is_misuse",
    "misuse_by_client",
    "objective_for",
    "parse_objective",
]

"""Cost attribution: what an execution cost, and what each replay saved (issue 6).

A handler, function or tool that knows what its work cost (money, model tokens, API credits)
calls :func:`report_cost` while it runs. The adapter running it opened a :class:`CostMeter`
in a context variable; the observation reads the meter when it finishes, puts the amounts on
the span, the metrics and the audit line, and stores them with the record.

Where the cost is stored: as one internal response header, ``retrysafe-cost``, in the stored
headers of the record (``settle(..., internal=...)``). Every store already persists headers
byte for byte, so no store schema changes, and the cost travels with the result it belongs
to: a replay served by another process, after a crash, still knows what the first execution
cost and reports it as *cost avoided* (not billable). Internal headers are never replayed to
clients (:func:`retrysafe._decide.replay_headers` drops the ``retrysafe-`` prefix).

The meter is a mutable object shared by reference, so costs reported from a thread pool
(Starlette runs sync endpoints in one with a copied context) still reach it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry.trace import Span

COST_HEADER = "retrysafe-cost"
COST_ATTRIBUTE = "retrysafe.cost"
DEFAULT_UNIT = "USD"


class CostMeter:
    """Amounts reported during one execution, summed per unit (thread-safe).

    ``span``, when set and still recording, gets the running total as ``retrysafe.cost`` at
    each report: a server span owned by an instrumentation may end before the observation
    finishes, so the attribute is written while the span is surely open.
    """

    __slots__ = ("_lock", "amounts", "span")

    def __init__(self) -> None:
        self.amounts: dict[str, float] = {}
        self.span: Span | None = None
        self._lock = threading.Lock()

    def add(self, amount: float, unit: str) -> None:
        with self._lock:
            self.amounts[unit] = self.amounts.get(unit, 0.0) + amount
            total = encode(self.amounts)
        span = self.span
        if span is not None and span.is_recording():
            span.set_attribute(COST_ATTRIBUTE, total)


_meter: ContextVar[CostMeter | None] = ContextVar("retrysafe_cost_meter", default=None)


def report_cost(amount: float, unit: str = DEFAULT_UNIT) -> bool:
    """Report that the execution in progress cost ``amount`` of ``unit`` (e.g. "USD", "tokens").

    Call it from inside an idempotent handler, function or tool; repeated calls add up per
    unit. Returns False (and records nothing) outside an observed execution, so library code
    may call it unconditionally. A negative, NaN or infinite amount, or a unit that is empty
    or contains ``,`` ``=`` or whitespace, raises :class:`ValueError`.
    """
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"cost amount must be a number, not {amount!r}")
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"cost amount must be finite and non-negative, not {amount!r}")
    if not unit or any(c in unit for c in ",= \t\r\n") or not unit.isprintable():
        raise ValueError(f"cost unit must be a short token such as 'USD' or 'tokens', not {unit!r}")
    meter = _meter.get()
    if meter is None:
        return False
    meter.add(float(amount), unit)
    return True


@contextmanager
def metering() -> Iterator[CostMeter]:
    """Open a fresh meter for one execution; :func:`report_cost` inside it adds to it."""
    meter = CostMeter()
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


def encode(amounts: Mapping[str, float]) -> str:
    """``{"USD": 0.25, "tokens": 1200}`` -> ``"USD=0.25, tokens=1200"`` (header value)."""
    return ", ".join(f"{unit}={amount!r}" for unit, amount in sorted(amounts.items()))


def decode(value: str) -> dict[str, float]:
    """The inverse of :func:`encode`; malformed parts are skipped (a header is not trusted)."""
    out: dict[str, float] = {}
    for part in value.split(","):
        unit, sep, number = part.strip().partition("=")
        if not sep or not unit:
            continue
        try:
            amount = float(number)
        except ValueError:
            continue
        if math.isfinite(amount) and amount >= 0:
            out[unit] = out.get(unit, 0.0) + amount
    return out


def stored_cost(headers: Iterable[tuple[str, str]]) -> dict[str, float]:
    """The cost stored with a record's headers, or ``{}``."""
    for name, value in headers:
        if name == COST_HEADER:
            return decode(value)
    return {}

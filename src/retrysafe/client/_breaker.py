"""Circuit breakers per host or named dependency (SPEC 24). No I/O; thread-safe.

Each circuit is a small state machine; these are all its transitions::

    CLOSED --(failure rate >= threshold over >= minimum_calls in the window)--> OPEN
    OPEN   --(open period elapsed; next call)-----------------------------------> HALF_OPEN
    HALF_OPEN --(``probes`` probe calls succeed)--------------------------------> CLOSED
    HALF_OPEN --(a probe fails)-------------------------------------------------> OPEN (longer)

The window is time-based (default 30 s) and kept as per-second buckets, so memory stays
bounded at any call rate. A call is a failure when it raised a transport error, got a 5xx, or
(when ``slow_call`` is set) took longer than that; 4xx answers never count as failures — the
dependency answered, the caller was wrong. The open period starts at ``open_for`` and grows by
``growth`` on every re-open without an intervening close, up to ``max_open_for``.

While open a call is refused before anything is sent, so its idempotency key is not consumed.
``metrics_only=True`` runs the same state machine and reports transitions but never refuses.
Listeners receive a frozen :class:`Transition` (and so does OpenTelemetry, as a counter).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from retrysafe.client import _telemetry
from retrysafe.errors import ConfigurationError

log = logging.getLogger("retrysafe.client")


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Transition:
    """A circuit changed state; what listeners receive."""

    circuit: str
    old: State
    new: State
    at: float  # the breaker's clock
    failure_rate: float  # over the window when it opened; 0.0 otherwise
    calls: int
    open_until: float | None  # set when ``new`` is OPEN


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; hand it back to :meth:`CircuitBreaker.record` or ``release``."""

    circuit: str
    generation: int
    probe: bool = False
    shadow: bool = False  # metrics-only mode let through a call the breaker would refuse


@dataclass(frozen=True, slots=True)
class Refusal:
    """The circuit is open: do not send. It may close at ``closes_at`` (breaker clock)."""

    circuit: str
    closes_at: float


Listener = Callable[[Transition], None]


class _Circuit:
    __slots__ = (
        "buckets",
        "generation",
        "open_until",
        "opens",
        "probe_successes",
        "probes_out",
        "state",
    )

    def __init__(self) -> None:
        self.state = State.CLOSED
        self.generation = 0
        self.buckets: deque[list[int]] = deque()  # [second, calls, failures]
        self.open_until = 0.0
        self.opens = 0  # consecutive opens without a close: drives the growing open period
        self.probes_out = 0
        self.probe_successes = 0


class CircuitBreaker:
    """Circuit breakers keyed by host (default) or one named dependency (``name=``)."""

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        minimum_calls: int = 20,
        window: float = 30.0,
        slow_call: float | None = None,
        open_for: float = 5.0,
        growth: float = 2.0,
        max_open_for: float = 300.0,
        probes: int = 3,
        metrics_only: bool = False,
        name: str | None = None,
        key: Callable[[httpx.Request], str] | None = None,
        listeners: Iterable[Listener] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < failure_rate <= 1:
            raise ConfigurationError("failure_rate is a fraction in (0, 1]")
        if minimum_calls < 1 or probes < 1:
            raise ConfigurationError("minimum_calls and probes must be at least 1")
        if window < 1 or open_for <= 0 or growth < 1 or max_open_for < open_for:
            raise ConfigurationError(
                "need window >= 1 s, open_for > 0, growth >= 1 and max_open_for >= open_for"
            )
        if slow_call is not None and slow_call <= 0:
            raise ConfigurationError("slow_call must be positive (or None)")
        if name is not None and key is not None:
            raise ConfigurationError("give either name= (one circuit) or key= (per request)")
        self.failure_rate = failure_rate
        self.minimum_calls = minimum_calls
        self.window = int(window)
        self.slow_call = slow_call
        self.open_for = open_for
        self.growth = growth
        self.max_open_for = max_open_for
        self.probes = probes
        self.metrics_only = metrics_only
        self.name = name
        self._key = key
        self.listeners: list[Listener] = list(listeners)
        self.clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def circuit_for(self, request: httpx.Request) -> str:
        """The circuit a request belongs to: ``name``, ``key(request)`` or host[:port]."""
        if self.name is not None:
            return self.name
        if self._key is not None:
            return self._key(request)
        return request.url.netloc.decode("ascii")

    def state(self, circuit: str) -> State:
        with self._lock:
            c = self._circuits.get(circuit)
            return c.state if c is not None else State.CLOSED

    def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def admit(self, circuit: str) -> Permit | Refusal:
        """May a call to ``circuit`` go out now?"""
        events: list[Transition] = []
        with self._lock:
            now = self.clock()
            c = self._circuit(circuit)
            verdict: Permit | Refusal
            if c.state is State.OPEN and now >= c.open_until:
                self._move(circuit, c, State.HALF_OPEN, now, events)
            if c.state is State.CLOSED:
                verdict = Permit(circuit, c.generation)
            elif c.state is State.HALF_OPEN and c.probes_out < self.probes:
                c.probes_out += 1
                verdict = Permit(circuit, c.generation, probe=True)
            else:
                closes_at = c.open_until if c.state is State.OPEN else now
                verdict = Refusal(circuit, closes_at)
                if self.metrics_only:
                    verdict = Permit(circuit, c.generation, shadow=True)
        self._emit(events)
        return verdict

    def record(self, permit: Permit, *, failed: bool, duration: float) -> None:
        """The outcome of a permitted call. ``failed`` is False for 2xx-4xx answers."""
        failed = failed or (self.slow_call is not None and duration >= self.slow_call)
        events: list[Transition] = []
        with self._lock:
            now = self.clock()
            c = self._circuit(permit.circuit)
            if permit.generation != c.generation or permit.shadow:
                pass  # a call from before the last transition says nothing about now
            elif c.state is State.CLOSED:
                self._count(c, now, failed)
                calls, failures = self._totals(c, now)
                if calls >= self.minimum_calls and failures / calls >= self.failure_rate:
                    self._open(permit.circuit, c, now, failures / calls, calls, events)
            elif c.state is State.HALF_OPEN and permit.probe:
                if failed:
                    self._open(permit.circuit, c, now, 1.0, c.probe_successes + 1, events)
                else:
                    c.probe_successes += 1
                    if c.probe_successes >= self.probes:
                        c.opens = 0
                        self._move(permit.circuit, c, State.CLOSED, now, events)
        self._emit(events)

    def release(self, permit: Permit) -> None:
        """A permitted call ended without a verdict (cancelled, local error): free its slot."""
        with self._lock:
            c = self._circuits.get(permit.circuit)
            if c is not None and permit.probe and permit.generation == c.generation:
                c.probes_out = max(0, c.probes_out - 1)

    # -- internals (lock held) ------------------------------------------------------------

    def _circuit(self, circuit: str) -> _Circuit:
        c = self._circuits.get(circuit)
        if c is None:
            c = self._circuits[circuit] = _Circuit()
        return c

    def _count(self, c: _Circuit, now: float, failed: bool) -> None:
        second = int(now)
        if not c.buckets or c.buckets[-1][0] != second:
            c.buckets.append([second, 0, 0])
        bucket = c.buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)

    def _totals(self, c: _Circuit, now: float) -> tuple[int, int]:
        oldest = int(now) - self.window
        while c.buckets and c.buckets[0][0] <= oldest:
            c.buckets.popleft()
        return sum(b[1] for b in c.buckets), sum(b[2] for b in c.buckets)

    def _open(
        self, name: str, c: _Circuit, now: float, rate: float, calls: int, events: list[Transition]
    ) -> None:
        period = min(self.max_open_for, self.open_for * self.growth**c.opens)
        c.opens += 1
        c.open_until = now + period
        self._move(name, c, State.OPEN, now, events, rate, calls)

    def _move(
        self,
        name: str,
        c: _Circuit,
        new: State,
        now: float,
        events: list[Transition],
        rate: float = 0.0,
        calls: int = 0,
    ) -> None:
        old = c.state
        c.state = new
        c.generation += 1
        c.buckets.clear()
        c.probes_out = 0
        c.probe_successes = 0
        open_until = c.open_until if new is State.OPEN else None
        events.append(Transition(name, old, new, now, rate, calls, open_until))

    def _emit(self, events: list[Transition]) -> None:
        for event in events:
            _telemetry.breaker_transition(event.old.value, event.new.value)
            log.info(
                "circuit %s: %s -> %s (failure rate %.0f%% over %d calls)",
                event.circuit,
                event.old,
                event.new,
                event.failure_rate * 100,
                event.calls,
            )
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:  # a broken listener must not break the call
                    log.exception("circuit breaker listener %r failed", listener)

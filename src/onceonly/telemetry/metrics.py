"""OpenTelemetry metrics (SPEC 33): never the key as an attribute; durations in seconds.

Instruments are created once from the global meter provider (a proxy until an SDK is set,
so they start recording as soon as the application configures one).
"""

from __future__ import annotations

from opentelemetry import metrics

from onceonly.outcomes import Outcome

_meter = metrics.get_meter("onceonly")

# Store round trips are sub-millisecond to tens of milliseconds; requests reach seconds.
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

requests = _meter.create_counter(
    "onceonly.requests", unit="{request}", description="Keyed requests and calls by outcome"
)
replays = _meter.create_counter(
    "onceonly.replays",
    unit="{request}",
    description="Replays answered from the store: work not executed and not billed",
)
cost_avoided = _meter.create_counter(
    "onceonly.cost.avoided", unit="1", description="Reported cost of work answered by replay"
)
duration = _meter.create_histogram(
    "onceonly.request.duration",
    unit="s",
    description="Time spent on a keyed request or call, by outcome",
    explicit_bucket_boundaries_advisory=_REQUEST_BUCKETS,
)
store_duration = _meter.create_histogram(
    "onceonly.store.duration",
    unit="s",
    description="Store operation latency",
    explicit_bucket_boundaries_advisory=_STORE_BUCKETS,
)


def decision(
    surface: str, operation: str, outcome: Outcome, seconds: float, cost: float | None
) -> None:
    attrs = {"onceonly.surface": surface, "onceonly.operation": operation, "outcome": outcome.value}
    requests.add(1, attrs)
    duration.record(seconds, attrs)
    if outcome is Outcome.REPLAYED:
        replays.add(1, {"onceonly.surface": surface, "onceonly.operation": operation})
        if cost:
            cost_avoided.add(cost, {"onceonly.operation": operation})


def store_latency(seconds: float, operation: str) -> None:
    store_duration.record(seconds, {"onceonly.store.operation": operation})

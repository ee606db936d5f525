"""Client instruments (SPEC 33): never the key as an attribute. No-ops without an SDK."""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("onceonly.client")

_retries = _meter.create_counter(
    "onceonly.client.retries", unit="{attempt}", description="Attempts after the first"
)
_refusals = _meter.create_counter(
    "onceonly.client.budget.refusals", unit="{attempt}", description="Retries refused by budget"
)
_transitions = _meter.create_counter(
    "onceonly.client.breaker.transitions", unit="{transition}", description="Circuit changes"
)
_parked = _meter.create_counter(
    "onceonly.client.dlq.parked", unit="{call}", description="Calls parked in the DLQ, by reason"
)


def retry(host: str) -> None:
    _retries.add(1, {"server.address": host})


def budget_refusal(host: str) -> None:
    _refusals.add(1, {"server.address": host})


def breaker_transition(old: str, new: str) -> None:
    _transitions.add(1, {"onceonly.breaker.from": old, "onceonly.breaker.to": new})


def parked(reason: str) -> None:
    _parked.add(1, {"onceonly.dlq.reason": reason})

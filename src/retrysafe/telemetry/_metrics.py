"""OpenTelemetry metrics (SPEC 33): never the key as an attribute; durations in seconds.

One :class:`Instruments` per meter. The default meter comes from the global meter provider,
which is a proxy until an SDK is configured, so instruments made at import time start
recording as soon as the application sets one up; with no SDK every call is a no-op.

Attributes are low-cardinality on purpose: surface (http, function, tool), the operation
(``METHOD path`` by default; use a route-template ``operation`` hook on :class:`Telemetry`
for paths carrying ids) and the outcome. The key, the scope and the fingerprint never appear.

``retrysafe.key.uses`` feeds the key correctness SLI (docs/observability.md has the PromQL of
its burn-rate alert): every keyed decision, with ``retrysafe.key.misuse`` saying whether the
client misused its key. Client identities stay out of metrics (unbounded cardinality): the
per-client breakdown is the report's, from the audit log.

``retrysafe.completions`` counts operations as they complete (SPEC 35a): once per run that
succeeded, marked ``duplicated`` when its key had run before (``expired``, ``recovered``).
A replay adds nothing, so a retry answered by the replay leaves one completion.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from retrysafe._outcomes import Completion, Outcome

# What each outcome says about the client's use of its key; None: not a key use (no usable key).
_MISUSE: dict[Outcome, str | None] = {outcome: "none" for outcome in Outcome}
_MISUSE.update(
    {Outcome.MISMATCH: "mismatch", Outcome.CONFLICT_IN_FLIGHT: "in_flight", Outcome.REJECTED: None}
)

ATTR_SURFACE = "retrysafe.surface"
ATTR_OPERATION = "retrysafe.operation"
ATTR_OUTCOME = "idempotency.outcome"
ATTR_MISUSE = "retrysafe.key.misuse"  # "none", "mismatch" or "in_flight"
ATTR_STORE_OP = "retrysafe.store.operation"
ATTR_COST_UNIT = "retrysafe.cost.unit"
ATTR_LEASE_LOST = "retrysafe.lease.lost_reason"
ATTR_COMPLETION = "retrysafe.completion"  # "once" or "duplicated" (SPEC 35a)

# Store round trips are sub-millisecond to tens of milliseconds; requests reach seconds.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


_CACHE_MAX = 4096
_STORE_ATTRS = {op: {ATTR_STORE_OP: op} for op in ("claim", "complete", "release")}


class Instruments:
    """The server-side instruments of one meter (client instruments live with the client)."""

    __slots__ = (
        "_cache",
        "completions",
        "cost",
        "cost_avoided",
        "duration",
        "key_uses",
        "leases_lost",
        "replays",
        "requests",
        "store_duration",
    )

    def __init__(self, provider: MeterProvider | None = None) -> None:
        self._cache: dict[
            tuple[str, str, Outcome], tuple[dict[str, str], dict[str, str], dict[str, str] | None]
        ] = {}
        meter = metrics.get_meter("retrysafe", meter_provider=provider)
        self.requests = meter.create_counter(
            "retrysafe.requests",
            unit="{request}",
            description="Keyed requests and calls by outcome",
        )
        self.key_uses = meter.create_counter(
            "retrysafe.key.uses",
            unit="{request}",
            description="Keyed requests and calls, by whether the client misused its key",
        )
        self.completions = meter.create_counter(
            "retrysafe.completions",
            unit="{operation}",
            description="Operations completed by a successful run: once, or duplicated when "
            "the key had run before (expired, recovered); replays add nothing",
        )
        self.replays = meter.create_counter(
            "retrysafe.replays",
            unit="{request}",
            description="Replays answered from the store: work not executed and not billed",
        )
        # The unit of a cost is whatever the reporter said (USD, tokens...): it is an attribute
        # because one counter per unit cannot be declared up front.
        self.cost = meter.create_counter(
            "retrysafe.cost", unit="{cost}", description="Reported cost of executions (billable)"
        )
        self.cost_avoided = meter.create_counter(
            "retrysafe.cost.avoided",
            unit="{cost}",
            description="Reported cost of the first execution, saved by each replay",
        )
        self.duration = meter.create_histogram(
            "retrysafe.request.duration",
            unit="s",
            description="Time spent on a keyed request or call, by outcome",
            explicit_bucket_boundaries_advisory=REQUEST_BUCKETS,
        )
        self.leases_lost = meter.create_counter(
            "retrysafe.lease.lost",
            unit="{claim}",
            description="Claims lost while their handler ran (taken over, or not renewed in "
            "time): a duplicate may have run the operation alongside",
        )
        self.store_duration = meter.create_histogram(
            "retrysafe.store.duration",
            unit="s",
            description="Latency of one store operation (claim, complete, release)",
            explicit_bucket_boundaries_advisory=STORE_BUCKETS,
        )

    def decision(
        self,
        surface: str,
        operation: str,
        outcome: Outcome,
        seconds: float,
        cost: Mapping[str, float] | None,
    ) -> None:
        where, attrs, key_use = self._attributes(surface, operation, outcome)
        self.requests.add(1, attrs)
        if key_use is not None:
            self.key_uses.add(1, key_use)
        self.duration.record(seconds, attrs)
        replayed = outcome is Outcome.REPLAYED
        if replayed:
            self.replays.add(1, where)
        if cost:
            counter = self.cost_avoided if replayed else self.cost
            for unit, amount in cost.items():
                counter.add(amount, {**where, ATTR_COST_UNIT: unit})

    def _attributes(
        self, surface: str, operation: str, outcome: Outcome
    ) -> tuple[dict[str, str], dict[str, str], dict[str, str] | None]:
        """Attribute dicts, cached: building them per request is most of the no-SDK cost."""
        key = (surface, operation, outcome)
        found = self._cache.get(key)
        if found is None:
            where = {ATTR_SURFACE: surface, ATTR_OPERATION: operation}
            misuse = _MISUSE[outcome]
            key_use = None if misuse is None else {**where, ATTR_MISUSE: misuse}
            found = (where, {**where, ATTR_OUTCOME: outcome.value}, key_use)
            if len(self._cache) < _CACHE_MAX:  # bounded: operations may be many
                self._cache[key] = found
        return found

    def completed(self, surface: str, operation: str, completion: Completion) -> None:
        """A run succeeded: the operation completed ``once`` or was ``duplicated``."""
        self.completions.add(
            1,
            {ATTR_SURFACE: surface, ATTR_OPERATION: operation, ATTR_COMPLETION: completion.value},
        )

    def lease_lost(self, surface: str, operation: str, reason: str) -> None:
        self.leases_lost.add(
            1, {ATTR_SURFACE: surface, ATTR_OPERATION: operation, ATTR_LEASE_LOST: reason}
        )

    def store_latency(self, operation: str, seconds: float) -> None:
        attrs = _STORE_ATTRS.get(operation) or {ATTR_STORE_OP: operation}
        self.store_duration.record(seconds, attrs)


_default: Instruments | None = None


def default_instruments() -> Instruments:
    """Instruments on the global meter provider, made once."""
    global _default
    if _default is None:
        _default = Instruments()
    return _default

"""What the demo's agent is asked to do, and how hard the network makes it: plain values.

The plan is a pure function of (operations, seed), so the orchestrating process and every agent
worker process — the one that is killed and the one that resumes — agree on it without
sharing anything but the two numbers. ``Faults`` and ``AgentSettings`` travel to the worker
on its command line as JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

SKUS = (("headphones", 7900), ("keyboard", 4900), ("monitor", 18900), ("cable", 900))
REFUND_SHARE = 0.25  # about one purchase in three is followed by a refund


@dataclass(frozen=True, slots=True)
class Order:
    """One purchase, and whether the agent refunds it right after."""

    order: str  # the agent's own id for it: part of the tool's arguments, so of its key
    customer: str
    sku: str
    cents: int
    refund: bool

    @property
    def operations(self) -> int:
        return 2 if self.refund else 1


def make_plan(operations: int, seed: int) -> tuple[Order, ...]:
    """Orders whose purchases plus refunds add up to ``operations`` (deterministic in seed)."""
    if operations < 1:
        raise ValueError("operations must be at least 1")
    rng = random.Random(seed)
    orders: list[Order] = []
    left = operations
    while left:
        sku, cents = rng.choice(SKUS)
        refund = left >= 2 and rng.random() < REFUND_SHARE / (1 - REFUND_SHARE)
        n = len(orders)
        orders.append(Order(f"ord-{n:04d}", f"cus-{rng.randrange(40):02d}", sku, cents, refund))
        left -= 2 if refund else 1
    return tuple(orders)


@dataclass(frozen=True, slots=True)
class Faults:
    """What the fault layer in front of the payments API does (per request, seeded)."""

    loss_rate: float = 0.05  # the handler ran, then the response is lost (connection dropped)
    burst_rate: float = 0.01  # a request starts a burst of 503s lasting burst_seconds
    burst_seconds: float = 0.3
    latency_ms: float = 15.0  # extra latency per request, uniform in [0, latency_ms]
    slow_rate: float = 0.02  # the card network is slow: the handler takes slow_seconds
    slow_seconds: float = 1.0  # longer than the agent's read timeout, so it retries in flight

    def __post_init__(self) -> None:
        for name in ("loss_rate", "burst_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        for name in ("burst_seconds", "latency_ms", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How one agent worker process runs; the same for the killed worker and its successor."""

    url: str
    state_dir: str  # checkpoint, DLQ and (with retrysafe) the tools' store live here
    run_id: str
    operations: int
    seed: int
    idempotent: bool  # False: no @idempotent_tool, and the server has no middleware
    lanes: int = 8  # orders worked on concurrently (asyncio tasks)
    checkpoint_every: int = 25  # completed orders between two checkpoints
    read_timeout: float = 0.4
    tool_lease: float = 1.0  # a killed worker's tool claims lapse this fast

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AgentSettings:
        return cls(**json.loads(text))

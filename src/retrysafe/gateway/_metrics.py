"""A few per-process counters, exposed in the Prometheus text format (version 0.0.4).

Never labelled by key or path (SPEC 33: keys are as sensitive as request ids, and paths have
unbounded cardinality). With ``--workers N`` each worker counts for itself; a scraper sees
whichever worker answers, so run one worker per scrape target when the numbers matter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

UPSTREAM_ERROR_KINDS = ("unreachable", "failed", "timeout", "aborted")


@dataclass
class GatewayMetrics:
    """Counters the gateway bumps; one event loop per process, so no lock is needed."""

    responses: Counter[str] = field(default_factory=Counter)  # by status class: "2xx" ...
    replays: int = 0
    upstream_errors: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    upstream_seconds_sum: float = 0.0
    upstream_count: int = 0

    def response(self, status: int, replayed: bool) -> None:
        self.responses[f"{status // 100}xx"] += 1
        if replayed:
            self.replays += 1

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] += 1

    def upstream_latency(self, seconds: float) -> None:
        self.upstream_seconds_sum += seconds
        self.upstream_count += 1

    def render(self) -> bytes:
        lines = [
            "# HELP retrysafe_gateway_responses_total Responses sent, by status class.",
            "# TYPE retrysafe_gateway_responses_total counter",
        ]
        for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            lines.append(f'retrysafe_gateway_responses_total{{code="{cls}"}} {self.responses[cls]}')
        lines += [
            "# HELP retrysafe_gateway_replays_total Responses replayed from the store.",
            "# TYPE retrysafe_gateway_replays_total counter",
            f"retrysafe_gateway_replays_total {self.replays}",
            "# HELP retrysafe_gateway_upstream_errors_total Upstream failures, by kind.",
            "# TYPE retrysafe_gateway_upstream_errors_total counter",
        ]
        for kind in UPSTREAM_ERROR_KINDS:
            count = self.upstream_errors[kind]
            lines.append(f'retrysafe_gateway_upstream_errors_total{{kind="{kind}"}} {count}')
        lines += [
            "# HELP retrysafe_gateway_in_flight Requests being handled now.",
            "# TYPE retrysafe_gateway_in_flight gauge",
            f"retrysafe_gateway_in_flight {self.in_flight}",
            "# HELP retrysafe_gateway_upstream_seconds Time until the upstream's response headers.",
            "# TYPE retrysafe_gateway_upstream_seconds summary",
            f"retrysafe_gateway_upstream_seconds_sum {self.upstream_seconds_sum}",
            f"retrysafe_gateway_upstream_seconds_count {self.upstream_count}",
        ]
        return ("\n".join(lines) + "\n").encode()

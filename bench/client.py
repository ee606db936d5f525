"""What retrysafe's client transport costs per request, and what it saves under failure.

Two measurements (issue 4, "Performance"; results in bench/README.md, "Client"):

1. **Overhead** of ``IdempotentTransport`` / ``AsyncIdempotentTransport`` per request against
   plain httpx: sequential ``POST``s with a small JSON body to a real HTTP/1.1 server on
   loopback (``bench/loopback_server.py``, a subprocess: keep-alive, one write per response,
   ``TCP_NODELAY``), no faults; and the same in process against ``httpx.MockTransport`` (no
   network, so only the client's own work is left). Per request: median and p99 wall time, and
   this process's CPU time. Variants take turns round by round, so a noisy neighbour on a shared
   machine slows all of them alike.
2. **Amplification** under 50 % injected failure (the server answers 503 at random): requests
   that reach the server per logical call, and the success rate, without a retry budget, with
   SPEC 23's default budget (20 % of the request rate plus a floor of 10 retries/s) and with the
   same budget without its floor.

    .venv/bin/python bench/client.py                 # everything (~1-2 minutes)
    .venv/bin/python bench/client.py --quick         # smoke run, a few seconds
    .venv/bin/python bench/client.py --nagle         # the 40 ms pitfall, reproduced
    .venv/bin/python bench/client.py --profile sync  # cProfile the sync transport (mock network)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from retrysafe.client import (
    AsyncIdempotentTransport,
    BudgetExhausted,
    CallFailed,
    CircuitBreaker,
    IdempotentTransport,
    RetryBudget,
    RetryPolicy,
)

HERE = Path(__file__).resolve().parent
BODY = b'{"customer": "cus_123", "amount": 1999, "currency": "eur"}'
HEADERS = {"content-type": "application/json"}
ANSWER = b'{"id": "ch_1", "amount": 1999}'
T = TypeVar("T")


# -- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def loopback_server(*, nagle: bool = False) -> Iterator[str]:
    """Start ``loopback_server.py`` in a subprocess; yields its base URL."""
    command = [sys.executable, str(HERE / "loopback_server.py"), *(["--nagle"] if nagle else [])]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the loopback server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def server_stats(base: str) -> dict[str, int]:
    with httpx.Client() as client:
        stats: dict[str, int] = client.get(f"{base}/stats").json()
        return stats


def server_reset(base: str, fail: float, seed: int) -> None:
    with httpx.Client() as client:
        client.post(f"{base}/reset", params={"fail": fail, "seed": seed}).raise_for_status()


# -- overhead -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    wrap: Callable[[httpx.BaseTransport], httpx.BaseTransport]
    awrap: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]
    keyed: bool = False  # the caller sends a fresh key and an attempt header itself


def plain(inner: T) -> T:
    return inner


VARIANTS = [
    Variant("httpx", plain, plain),
    # What the transport adds to the wire, without the transport: separates the cost of two
    # more headers (a UUID made, encoded by h11, parsed by the server) from the retry logic.
    Variant("httpx + key headers", plain, plain, keyed=True),
    Variant("retrysafe", IdempotentTransport, AsyncIdempotentTransport),
    Variant(
        "retrysafe+breaker",
        lambda inner: IdempotentTransport(inner, breaker=CircuitBreaker()),
        lambda inner: AsyncIdempotentTransport(inner, breaker=CircuitBreaker()),
    ),
]


@dataclass
class Timings:
    """Per-request wall times (ns) of every round, and CPU µs/request per round."""

    wall_ns: list[list[int]]
    cpu_us: list[float]

    def all_ns(self) -> list[int]:
        return [t for run in self.wall_ns for t in run]

    def median_us(self) -> float:
        return statistics.median(self.all_ns()) / 1000

    def p99_us(self) -> float:
        values = sorted(self.all_ns())
        return values[min(len(values) - 1, int(len(values) * 0.99))] / 1000

    def cpu_median_us(self) -> float:
        return statistics.median(self.cpu_us)


def added_us(a: Timings, base: Timings) -> float:
    """Median over rounds of (round median of ``a`` - round median of ``base``), µs."""
    pairs = zip(a.wall_ns, base.wall_ns, strict=True)
    return statistics.median(statistics.median(x) - statistics.median(y) for x, y in pairs) / 1000


def mock_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, headers={"content-type": "application/json"}, content=ANSWER)


def headers(keyed: bool) -> dict[str, str]:
    if not keyed:
        return HEADERS
    return {**HEADERS, "Idempotency-Key": str(uuid.uuid4()), "Idempotency-Attempt": "1"}


def sync_run(
    client: httpx.Client, url: str, n: int, keyed: bool = False
) -> tuple[list[int], float]:
    """``n`` sequential POSTs; (wall ns of each, CPU µs per request)."""
    wall: list[int] = []
    cpu = time.process_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        response = client.post(url, content=BODY, headers=headers(keyed))
        wall.append(time.perf_counter_ns() - t0)
        if response.status_code != 201:
            raise RuntimeError(f"unexpected HTTP {response.status_code}")
    return wall, (time.process_time_ns() - cpu) / n / 1000


async def async_run(
    client: httpx.AsyncClient, url: str, n: int, keyed: bool = False
) -> tuple[list[int], float]:
    wall: list[int] = []
    cpu = time.process_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        response = await client.post(url, content=BODY, headers=headers(keyed))
        wall.append(time.perf_counter_ns() - t0)
        if response.status_code != 201:
            raise RuntimeError(f"unexpected HTTP {response.status_code}")
    return wall, (time.process_time_ns() - cpu) / n / 1000


def overhead_sync(url: str | None, rounds: int, n: int) -> dict[str, Timings]:
    """Sync variants against ``url`` (a real server) or, when None, ``MockTransport``."""

    def inner() -> httpx.BaseTransport:
        return httpx.MockTransport(mock_handler) if url is None else httpx.HTTPTransport()

    target = url or "http://bench.test"
    clients = {v: httpx.Client(transport=v.wrap(inner())) for v in VARIANTS}
    results = {v.name: Timings([], []) for v in VARIANTS}
    try:
        for v, client in clients.items():  # warm-up: connections, imports, caches
            sync_run(client, f"{target}/charges", max(20, n // 5), v.keyed)
        for _ in range(rounds):
            for v, client in clients.items():
                wall, cpu = sync_run(client, f"{target}/charges", n, v.keyed)
                results[v.name].wall_ns.append(wall)
                results[v.name].cpu_us.append(cpu)
    finally:
        for client in clients.values():
            client.close()
    return results


async def overhead_async(url: str | None, rounds: int, n: int) -> dict[str, Timings]:
    def inner() -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(mock_handler) if url is None else httpx.AsyncHTTPTransport()

    target = url or "http://bench.test"
    clients = {v: httpx.AsyncClient(transport=v.awrap(inner())) for v in VARIANTS}
    results = {v.name: Timings([], []) for v in VARIANTS}
    try:
        for v, client in clients.items():
            await async_run(client, f"{target}/charges", max(20, n // 5), v.keyed)
        for _ in range(rounds):
            for v, client in clients.items():
                wall, cpu = await async_run(client, f"{target}/charges", n, v.keyed)
                results[v.name].wall_ns.append(wall)
                results[v.name].cpu_us.append(cpu)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def print_overhead(title: str, results: dict[str, Timings]) -> None:
    base = results["httpx"]
    print(f"\n{title}\n")
    print("| client | median µs | p99 µs | + median µs | CPU µs/request | + CPU µs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in results.items():
        print(
            f"| {name} | {t.median_us():.0f} | {t.p99_us():.0f} | {added_us(t, base):+.0f} "
            f"| {t.cpu_median_us():.0f} | {t.cpu_median_us() - base.cpu_median_us():+.0f} |"
        )


# -- amplification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Amplification:
    label: str
    calls: int
    succeeded: int
    server_requests: int  # what reached the server
    client_attempts: int  # what the transport says it sent (must equal the above)
    refused: int  # calls that stopped because the budget refused a retry
    max_per_key: int
    seconds: float

    @property
    def factor(self) -> float:
        return self.server_requests / self.calls

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.calls


POLICY = RetryPolicy(attempts=3, base=0.002, cap=0.02)  # short pauses keep the run short
BUDGETS: list[tuple[str, Callable[[], RetryBudget | None]]] = [
    ("no budget", lambda: None),
    ("budget (default: 20 % + 10/s floor)", RetryBudget),
    ("budget, no floor (20 %)", lambda: RetryBudget(floor=0.0)),
]


async def amplify(
    base: str, label: str, budget: RetryBudget | None, calls: int, concurrency: int, seed: int
) -> Amplification:
    """``calls`` logical POSTs, ``concurrency`` at a time, against a server failing 50 %."""
    await asyncio.to_thread(server_reset, base, 0.5, seed)
    transport = AsyncIdempotentTransport(retry=POLICY, budget=budget or False)
    succeeded = attempts = refused = 0
    todo = iter(range(calls))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal succeeded, attempts, refused
        for _ in todo:
            try:
                response = await client.post(f"{base}/charges", content=BODY, headers=HEADERS)
            except CallFailed as exc:
                attempts += len(exc.attempts)
                refused += isinstance(exc, BudgetExhausted)
                continue
            attempts += response.extensions["retrysafe"].attempts
            succeeded += response.status_code == 201

    start = time.perf_counter()
    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    stats = await asyncio.to_thread(server_stats, base)
    return Amplification(
        label,
        calls,
        succeeded,
        stats["requests"],
        attempts,
        refused,
        stats["max_per_key"],
        seconds,
    )


def print_amplification(results: list[Amplification], concurrency: int) -> None:
    print(
        f"\nAmplification: 50 % of requests answered 503 at random; {POLICY.attempts} attempts, "
        f"full-jitter backoff base {POLICY.base} s cap {POLICY.cap} s; {concurrency} calls at "
        "a time\n"
    )
    print("| client | logical calls | reached the server | amplification | success rate "
          "| refused by budget | max per key | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.label} | {r.calls} | {r.server_requests} | {r.factor:.2f} "
            f"| {r.success_rate:.1%} | {r.refused} | {r.max_per_key} | {r.seconds:.1f} |"
        )


# -- main ---------------------------------------------------------------------------------------


def profile_sync(n: int) -> None:
    client = httpx.Client(transport=IdempotentTransport(httpx.MockTransport(mock_handler)))
    sync_run(client, "http://bench.test/charges", 200)
    profiler = cProfile.Profile()
    profiler.enable()
    sync_run(client, "http://bench.test/charges", n)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def nagle_demo(n: int) -> None:
    """The pitfall: a server without TCP_NODELAY that writes head and body separately."""
    for nagle in (True, False):
        with loopback_server(nagle=nagle) as base:
            results = overhead_sync(base, 1, n)
        what = "Nagle on, head and body in two writes" if nagle else "TCP_NODELAY, one write"
        medians = ", ".join(f"{k} {v.median_us():.0f} µs" for k, v in results.items())
        print(f"server {what}: {medians}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small runs (smoke test)")
    parser.add_argument("--rounds", type=int, default=11, help="rounds per variant")
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--calls", type=int, default=2000, help="logical calls, amplification")
    parser.add_argument("--concurrency", type=int, default=16, help="calls at a time")
    parser.add_argument("--seed", type=int, default=1, help="the server's failure RNG seed")
    parser.add_argument("--nagle", action="store_true", help="reproduce the 40 ms pitfall")
    parser.add_argument("--profile", choices=["sync"], help="cProfile the transport instead")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.calls = 2, 50, 200
    if args.profile:
        profile_sync(args.requests * 10)
        return 0
    if args.nagle:
        nagle_demo(min(args.requests, 40))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {load:.1f}; {args.rounds} rounds x {args.requests} requests per variant"
    )
    print_overhead(
        "In process (httpx.MockTransport), sync", overhead_sync(None, args.rounds, args.requests)
    )
    print_overhead(
        "In process (httpx.MockTransport), async",
        asyncio.run(overhead_async(None, args.rounds, args.requests)),
    )
    with loopback_server() as base:
        print_overhead(f"Loopback ({base}), sync", overhead_sync(base, args.rounds, args.requests))
        print_overhead(
            f"Loopback ({base}), async",
            asyncio.run(overhead_async(base, args.rounds, args.requests)),
        )
        results = [
            asyncio.run(amplify(base, label, make(), args.calls, args.concurrency, args.seed))
            for label, make in BUDGETS
        ]
    print_amplification(results, args.concurrency)
    consistent = all(r.server_requests == r.client_attempts for r in results)
    print(f"\nserver count = transport's attempt count in every run: {consistent}")
    print(json.dumps({"amplification": {r.label: round(r.factor, 3) for r in results}}))
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())

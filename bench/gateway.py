"""Gateway benchmark: requests/s and p50/p99 latency, through the gateway vs direct.

    python bench/gateway.py [--requests 2000] [--concurrency 32] [--store URL ...] [--workers N]

Starts, on loopback, a minimal upstream (uvicorn, one process) and one gateway process per
store (``python -m retrysafe.cli proxy``), then drives them with an async httpx load script:

- ``direct``        POST straight to the upstream (the baseline)
- ``pass-through``  POST through the gateway without a key (forwarding cost only)
- ``first``         POST through the gateway, a fresh key each (claim + forward + complete)
- ``replay``        the same keys again (one store read, the upstream is not called)

Each scenario is preceded by a short warm-up. The load generator shares the machine with the
servers, so absolute numbers are a floor; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

BODY = b'{"amount": 1000, "currency": "eur"}'
RESPONSE = b'{"id": "ch_1", "status": "succeeded"}'


async def upstream_app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
    """The cheapest honest upstream: reads the body, answers 201 with a small JSON body."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(RESPONSE))]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": RESPONSE})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def start_gateway(upstream: str, store: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "retrysafe.cli", "proxy", "--upstream", upstream, "--store", store]
    cmd += ["--config", str(Path(__file__).with_name("gateway_shared_scope.toml"))]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/_retrysafe/health", proc)
    return proc, url


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def run(url: str, requests: int, concurrency: int, make: Request) -> dict[str, float]:
    """Send ``requests`` requests, ``concurrency`` at a time; latency per request, total rate."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        queue = iter(range(requests))

        async def worker() -> None:
            nonlocal errors
            for i in queue:
                t0 = time.perf_counter()
                response = await make(client, i)
                latencies.append(time.perf_counter() - t0)
                if response.status_code >= 300:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": requests / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
    }


async def scenarios(
    direct: str, gateway: str, requests: int, concurrency: int, warmup: int
) -> dict[str, dict[str, float]]:
    keys = [uuid.uuid4().hex for _ in range(requests)]

    def plain(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post("/charges", content=BODY)

    def keyed(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post("/charges", content=BODY, headers={"Idempotency-Key": keys[i]})

    def warm(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post("/charges", content=BODY, headers={"Idempotency-Key": uuid.uuid4().hex})

    results = {}
    for name, url, make in [
        ("direct", direct, plain),
        ("pass-through", gateway, plain),
        ("first", gateway, keyed),
        ("replay", gateway, keyed),
    ]:
        if name != "replay":  # the replay warm-up would be the first run of new keys
            await run(url, warmup, concurrency, warm if name == "first" else make)
        results[name] = await run(url, requests, concurrency, make)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--store", action="append", help="store URL (repeatable)")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    tmp = Path(tempfile.mkdtemp(prefix="retrysafe-bench-"))
    stores = args.store or [f"sqlite:///{tmp / 'gateway.db'}"]
    upstream, direct = start_upstream()
    print(
        f"requests={args.requests} concurrency={args.concurrency} workers={args.workers} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}\n"
    )
    print("| store | scenario | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|")
    try:
        for store in stores:
            gateway, url = start_gateway(direct, store, args.workers)
            try:
                results = asyncio.run(
                    scenarios(direct, url, args.requests, args.concurrency, args.warmup)
                )
            finally:
                gateway.terminate()
                gateway.wait()
            kind = store.split(":", 1)[0]
            for name, r in results.items():
                print(
                    f"| {kind} | {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
                    f"| {r['errors']:.0f} |"
                )
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()

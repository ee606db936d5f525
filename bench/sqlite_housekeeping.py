"""The SQLite store's housekeeping under a sustained write rate: rows and WAL over minutes.

    python bench/sqlite_housekeeping.py [--rate 500] [--seconds 180] [--processes 4]
                                        [--ttl 5] [--retention 5] [--body 300]

``--processes`` OS processes share one database file (WAL mode, as several application
workers would) and together write ``--rate`` new keys per second, each a claim and a completion
through the store's sync API with a ``--body``-byte response, for ``--seconds``. Records live
``--ttl`` + ``--retention`` seconds of real time, so a store whose purge keeps up holds about
``rate x (ttl + retention)`` rows. Every 5 s the parent prints the rows in the table, the size
of the ``-wal`` file and of the database; at the end, the highest of each after the first
TTL + retention (the warm-up) and each process's write latency (claim + completion:
median, p99, max; a checkpoint's wait shows up in max).

Run it against another checkout's code with ``PYTHONPATH=/path/to/checkout/src``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import sqlite3
import statistics
import tempfile
import time
from typing import Any

from retrysafe.stores import Claimed, StoredResponse
from retrysafe.stores.sqlite import TABLE, SQLiteStore

SAMPLE_EVERY = 5.0
MiB = 1024 * 1024


def writer(
    path: str, name: str, rate: float, seconds: float, ttl: float, retention: float, size: int
) -> tuple[int, list[float]]:
    """One process: ``rate`` keys per second on a fixed schedule (no catching up in bursts
    beyond one slot), for ``seconds``. Returns the writes done and their latencies."""
    store = SQLiteStore(path)
    body = StoredResponse(201, (("content-type", "application/json"),), b"x" * size)
    latencies: list[float] = []
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + n / rate
        if due > now:
            time.sleep(due - now)
        key = f"{name}-{n}"
        began = time.perf_counter()
        claimed = store.claim(key, "fp", 30.0)
        assert isinstance(claimed, Claimed)
        store.complete(key, claimed.token, body, ttl, retention)
        latencies.append(time.perf_counter() - began)
        n += 1
    store.close()
    return n, latencies


def _run(args: tuple[Any, ...], out: Any) -> None:
    out.put(writer(*args))


def count_rows(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="new keys per second, total")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--retention", type=float, default=5.0)
    parser.add_argument("--body", type=int, default=300, help="response body bytes")
    opts = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="retrysafe-hk-")
    path = os.path.join(folder, "bench.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per_process = opts.rate / opts.processes
    children = [
        ctx.Process(
            target=_run,
            args=(
                (path, f"p{p}", per_process, opts.seconds, opts.ttl, opts.retention, opts.body),
                out,
            ),
        )
        for p in range(opts.processes)
    ]
    print(
        f"{opts.processes} processes, {opts.rate:g} writes/s for {opts.seconds:g} s, "
        f"TTL {opts.ttl:g} s + retention {opts.retention:g} s, {opts.body}-byte bodies; "
        f"expected steady state about {opts.rate * (opts.ttl + opts.retention):,.0f} rows"
    )
    print(f"{'t (s)':>6} {'rows':>9} {'-wal MiB':>9} {'db MiB':>8}")
    start = time.monotonic()
    for child in children:
        child.start()
    warm = opts.ttl + opts.retention
    highest = {"rows": 0, "wal": 0, "db": 0}
    next_sample = start + SAMPLE_EVERY
    results: list[tuple[int, list[float]]] = []
    # Results are read as they come: a child cannot exit before its queue is drained.
    while len(results) < len(children):
        with contextlib.suppress(queue.Empty):
            results.append(out.get(timeout=max(0.01, min(next_sample - time.monotonic(), 0.5))))
        if time.monotonic() < next_sample:
            continue
        next_sample += SAMPLE_EVERY
        elapsed = time.monotonic() - start
        sample = {"rows": count_rows(path), "wal": size(path + "-wal"), "db": size(path)}
        print(
            f"{elapsed:6.0f} {sample['rows']:9,} {sample['wal'] / MiB:9.1f} "
            f"{sample['db'] / MiB:8.1f}",
            flush=True,
        )
        if elapsed > warm:
            highest = {k: max(highest[k], sample[k]) for k in highest}
    for child in children:
        child.join()
    writes = sum(n for n, _ in results)
    print(
        f"done: {writes:,} writes ({writes / opts.seconds:,.0f}/s); after the warm-up: "
        f"rows <= {highest['rows']:,}, -wal <= {highest['wal'] / MiB:.1f} MiB, "
        f"db <= {highest['db'] / MiB:.1f} MiB"
    )
    for p, (_, latencies) in enumerate(results):
        latencies.sort()
        print(
            f"p{p}: write latency median {statistics.median(latencies) * 1000:.2f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()

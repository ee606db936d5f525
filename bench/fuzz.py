"""The HTTP fuzzer at length: generated requests at every door, every invariant checked.

    python bench/fuzz.py --requests 1000000 --door all [--minutes 20] [--known] [--workers 6]

The fuzzer is ``tests/kit/fuzz.py`` (strategies, the recording app, the invariant checker,
the door drivers); CI runs it briefly (``tests/adversarial/test_fuzz.py``). Here:

- Hypothesis draws a pool of scenarios per door (``--pool``, a seed per run unless
  ``--seed``); each scenario is then sent over and over, each time with fresh keys (a new
  nonce), so the store is never warm for it. A scenario is 1-8 requests (bursts send 2-4).
- The door runs in a child process (the servers, the app, its execution log), so client and
  servers use both cores; the client pipelines what it can over raw sockets, from
  ``--workers`` threads.
- Every answer is checked as it comes, executions about once a second and at the end once
  the app is idle; violations are printed with the request's bytes and the answer, and so are
  errors the servers or retrysafe logged (crashes).

``--known`` also generates the input classes of defects being fixed (``kit.fuzz.KNOWN``).
Stops at ``--requests`` requests per door (``--door all``: split evenly) or ``--minutes``.
Exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import random
import sys
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from kit.fuzz import (  # noqa: E402
    DOORS,
    KNOWN,
    Checker,
    Door,
    Execution,
    Scenario,
    drive,
    scenarios,
)

# Known-defect classes whose fixes are on main: generated without --known too.
FIXED = frozenset({"dot-segment", "framing-gateway", "transient", "path-escape"})


def serve(kind: str, conn: Connection) -> None:
    """The child process: run the door, answer the parent's questions about its app."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the app's deliberate 500s log tracebacks
    with DOORS[kind](keep=False) as door:
        conn.send(door.url)
        while (message := conn.recv()) != "stop":
            if message[0] == "drain":
                conn.send(door.recorder.drain(message[1]))
            elif message[0] == "crashes":
                conn.send(list(door.crashes.crashes))
                door.crashes.crashes.clear()


class RemoteRecorder:
    """The child's recorder, over a pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def ask(self, *message: Any) -> Any:
        with self.lock:
            self.conn.send(message)
            return self.conn.recv()

    def drain(self, wait: bool = True) -> list[Execution]:
        found: list[Execution] = self.ask("drain", wait)
        return found


@contextlib.contextmanager
def child_door(kind: str) -> Any:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=serve, args=(kind, child), daemon=True)
    process.start()
    try:
        url = parent.recv()
        yield Door(kind, url, RemoteRecorder(parent))
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(20)
        if process.is_alive():
            process.terminate()


def pool(kind: str, known: frozenset[str], size: int, run_seed: int) -> list[Scenario]:
    """``size`` scenarios drawn by Hypothesis (generation only: nothing to shrink here)."""
    found: list[Scenario] = []

    @settings(
        max_examples=size,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(run_seed)
    @given(scenarios(kind, known))
    def collect(scenario: Scenario) -> None:
        found.append(scenario)

    collect()
    return found


class Run:
    """One door's run: workers drive scenarios, the main thread checks executions."""

    SHOWN = 20  # violations printed in full (then counted)

    def __init__(self, door: Door, scenarios: list[Scenario], target: int, deadline: float):
        self.door, self.scenarios = door, scenarios
        self.target, self.deadline = target, deadline
        self.checker = Checker(door.kind, slim=True)
        self.lock = threading.Lock()
        self.order = itertools.count()
        self.nonces = itertools.count()
        self.shown = 0
        self.crashes: list[str] = []

    def done(self) -> bool:
        return self.checker.requests >= self.target or time.monotonic() > self.deadline

    def worker(self) -> None:
        while not self.done():
            scenario = self.scenarios[next(self.order) % len(self.scenarios)]
            sent = drive(self.door, scenario, f"n{next(self.nonces)}")
            with self.lock:
                self.show(self.checker.responses(sent))

    def show(self, found: list[Any]) -> None:
        for violation in found:
            self.shown += 1
            if self.shown <= self.SHOWN:
                print(f"VIOLATION {violation}", flush=True)

    def run(self, workers: int) -> None:
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        last = started
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            found = self.checker.settle(self.door.recorder, wait=False)
            with self.lock:
                self.show(found)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                rate = self.checker.requests / (last - started)
                print(f"  {self.door.kind}: {self.checker.requests:,} requests, {rate:,.0f}/s")
        with self.lock:
            self.show(self.checker.settle(self.door.recorder, wait=True))
        self.crashes = self.door.recorder.ask("crashes")
        for crash in self.crashes[: self.SHOWN]:
            print(f"CRASH {crash}", flush=True)
        self.seconds = time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--door", choices=[*sorted(DOORS), "all"], default="all")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--known", action="store_true", help="generate known-defect inputs")
    parser.add_argument("--pool", type=int, default=3000, help="scenarios drawn per door")
    parser.add_argument("--workers", type=int, default=6, help="client threads per door")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    kinds = sorted(DOORS) if args.door == "all" else [args.door]
    known = frozenset(KNOWN) if args.known else FIXED
    run_seed = args.seed if args.seed is not None else random.randrange(2**32)
    per_door = -(-args.requests // len(kinds))
    minutes = args.minutes / len(kinds) if args.minutes else None
    print(f"seed {run_seed}; {per_door:,} requests per door; known classes: {sorted(known)}")
    total, bad = Counter[str](), 0
    for kind in kinds:
        began = time.monotonic()
        scenarios_ = pool(kind, known, args.pool, run_seed)
        drawn = time.monotonic() - began
        print(f"{kind}: {len(scenarios_):,} scenarios drawn in {drawn:.0f} s")
        deadline = time.monotonic() + (minutes * 60 if minutes else float("inf"))
        with child_door(kind) as door:
            run = Run(door, scenarios_, per_door, deadline)
            run.run(args.workers)
        c = run.checker
        kinds_found = Counter(v.invariant for v in c.violations)
        total.update(kinds_found)
        bad += len(c.violations) + len(run.crashes)
        print(
            f"{kind}: {c.requests:,} requests in {run.seconds:.0f} s "
            f"({c.requests / run.seconds:,.0f}/s), {c.executed:,} executions, "
            f"{c.replays:,} replays; violations {dict(kinds_found) or 0}; "
            f"crashes {len(run.crashes)}"
        )
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(c.statuses.items()))
        print(f"  statuses: {statuses}", flush=True)
    print(f"total violations {dict(total) or 0}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

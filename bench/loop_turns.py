"""Event-loop iterations per request through the ASGI middleware, per store.

    python bench/loop_turns.py [--stores memory,redis,postgres] [--n 200]
    python bench/loop_turns.py --stores memory --only first --n 1200 --quiet   # for callgrind

Each request is a raw ASGI call on ``bench/stores.py``'s tiny app (no HTTP server), awaited
from one task on an event loop whose ``_run_once`` counts itself: the count is how many times
the loop went round (ran its ready callbacks, polled the selector) while the request was in
progress. *first* = a new key (claim, handler, complete), *replay* = a completed key (one
claim). Connections, scripts and prepared statements are warmed up first. Every count is the
most common one over ``--n`` requests, with its minimum and maximum.

Instructions per request: run this under callgrind twice with different ``--n`` and divide
the difference of the totals by the difference of ``--n`` (``--quiet`` prints nothing):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.1200 \\
        .venv/bin/python bench/loop_turns.py --stores memory --only first --n 1200 --quiet
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.200 \\
        .venv/bin/python bench/loop_turns.py --stores memory --only first --n 200 --quiet
    callgrind_annotate /tmp/cg.1200 | grep 'PROGRAM TOTALS'   # and the same for /tmp/cg.200
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import uuid
from typing import Any

from retrysafe import Policy, shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware

# bench/ (the script's directory) is on sys.path
from stores import app, call, close_kind, open_kind


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its iterations."""

    turns = 0

    def _run_once(self) -> None:
        self.turns += 1
        super()._run_once()  # type: ignore[misc]


def new_loop() -> CountingLoop:
    return CountingLoop()


async def turns_of(asgi: Any, key: str) -> int:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, CountingLoop)
    before = loop.turns
    status = await call(asgi, key)
    assert status == 201, status
    return loop.turns - before


async def measure(kind: str, n: int, only: str, tmp: str) -> dict[str, tuple[int, int, int]]:
    store = open_kind(kind, tmp)
    asgi = ASGIIdempotencyMiddleware(app, store=store, policy=Policy(scope=shared_scope))
    run = uuid.uuid4().hex
    for i in range(20):  # warm-up: connections, scripts, prepared statements
        await call(asgi, f"{run}-warm-{i}")
        await call(asgi, f"{run}-warm-{i}")
    figures = {}
    for path in ("first", "replay"):
        if only not in ("both", path):
            continue
        counts = []
        for i in range(n):
            key = f"{run}-{i}" if path == "first" else f"{run}-warm-0"
            counts.append(await turns_of(asgi, key))
        common = collections.Counter(counts).most_common(1)[0][0]
        figures[path] = (common, min(counts), max(counts))
    await close_kind(kind, store)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--stores", default="memory,redis,postgres")
    parser.add_argument("--only", choices=["both", "first", "replay"], default="both")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            with asyncio.Runner(loop_factory=new_loop) as runner:
                figures = runner.run(measure(kind, args.n, args.only, tmp))
            if not args.quiet:
                for path, (common, low, high) in figures.items():
                    print(f"{kind:10} {path:7} {common:3} loop turns (min {low}, max {high})")


if __name__ == "__main__":
    main()

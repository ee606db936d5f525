"""Per-request cost of retrysafe's ASGI middleware, in process, no network.

Each variant drives one ASGI app with raw ASGI calls in a loop (a scope, a ``receive`` that
hands over the body once, a ``send`` that keeps the status) and reports microseconds per
request, the median of several runs. Variants: a bare Starlette app; the same app behind
retrysafe with the memory store and with the SQLite store, each for a first execution (a new
key every request) and a replay (one key, already completed), and the replays again with the
local replay cache (``CachedStore``) in front of each store.

Round trips are counted separately, through a counting store wrapper, so the timed loops pay
nothing for the counting: SPEC 36 says a replay costs one store call, a first execution two.

    python bench/run.py                # full run (see bench/README.md for results)
    python bench/run.py --quick        # a few hundred requests per variant, as a smoke test
    python bench/run.py --profile memory-first   # cProfile one variant, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import Policy, shared_scope
from retrysafe.http import ASGIApp, ASGIIdempotencyMiddleware, WSGIApp, WSGIIdempotencyMiddleware
from retrysafe.stores import DualStore
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.testing import RecordingStore

Message = MutableMapping[str, Any]

# A server turns its event loop between requests (socket I/O); a tight loop of raw calls never
# would, and timers cancelled by every request (the lease heartbeat's) would then pile up in the
# loop forever and slow everything down. One turn per LOOP_EVERY requests is what a real loop
# does at least, and costs all variants the same.
LOOP_EVERY = 100
BODY = json.dumps({"customer": "cus_123", "amount": 1999, "currency": "eur"}).encode()


async def charge(request: Request) -> Response:
    """A small but real handler: parse the JSON body, answer 201 with a JSON document."""
    order = await request.json()
    return JSONResponse({"id": "ch_1", **order}, status_code=201)


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/charges", charge, methods=["POST"])])


def guarded_app(store: DualStore) -> ASGIIdempotencyMiddleware:
    return ASGIIdempotencyMiddleware(bare_app(), store=store, policy=Policy(scope=shared_scope))


def scope_for(key: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"authorization", b"Bearer sk_test_bench"),
    ]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/charges",
        "raw_path": b"/charges",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: ASGIApp, scope: dict[str, Any]) -> int:
    """One raw ASGI request; returns the response status."""
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    make_app: Callable[[], ASGIApp]
    keys: Callable[[], Iterator[str | None]]  # the key of each request
    expect: int = 201


def fresh_keys() -> Iterator[str | None]:
    while True:
        yield str(uuid.uuid4())


def one_key() -> Iterator[str | None]:
    key = str(uuid.uuid4())
    while True:
        yield key


def no_key() -> Iterator[str | None]:
    while True:
        yield None


def variants(tmp: Path) -> list[Variant]:
    def sqlite() -> SQLiteStore:
        return SQLiteStore(tmp / f"bench-{uuid.uuid4().hex[:8]}.db")

    return [
        Variant("bare", "bare Starlette app", bare_app, no_key),
        Variant("memory-first", "+ retrysafe, memory, first execution",
                lambda: guarded_app(MemoryStore()), fresh_keys),
        Variant("memory-replay", "+ retrysafe, memory, replay",
                lambda: guarded_app(MemoryStore()), one_key),
        Variant("sqlite-first", "+ retrysafe, SQLite, first execution",
                lambda: guarded_app(sqlite()), fresh_keys),
        Variant("sqlite-replay", "+ retrysafe, SQLite, replay",
                lambda: guarded_app(sqlite()), one_key),
        Variant("memory+cache-replay", "+ retrysafe, memory + local cache, replay",
                lambda: guarded_app(CachedStore(MemoryStore())), one_key),
        Variant("sqlite+cache-replay", "+ retrysafe, SQLite + local cache, replay",
                lambda: guarded_app(CachedStore(sqlite())), one_key),
    ]  # fmt: skip


# -- WSGI: the same handler as a Flask view, behind the WSGI middleware (sync store path) ------


def flask_app() -> Flask:
    app = Flask("bench")

    @app.post("/charges")
    def charges() -> tuple[dict[str, Any], int]:
        return {"id": "ch_1", **flask_request.get_json()}, 201

    return app


def guarded_wsgi(store: DualStore) -> WSGIApp:
    return WSGIIdempotencyMiddleware(
        flask_app().wsgi_app, store=store, policy=Policy(scope=shared_scope)
    )


def environ_for(key: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/charges",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_HOST": "bench",
        "HTTP_AUTHORIZATION": "Bearer sk_test_bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if key is not None:
        environ["HTTP_IDEMPOTENCY_KEY"] = key
    return environ


def call_wsgi(app: WSGIApp, environ: dict[str, Any]) -> int:
    """One WSGI request as a server makes it; returns the response status."""
    status = 0

    def start_response(line: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        nonlocal status
        status = int(line[:3])
        return lambda data: None

    environ["wsgi.input"] = io.BytesIO(BODY)
    result = app(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status


@dataclass(frozen=True)
class WSGIVariant:
    name: str
    label: str
    make_app: Callable[[], WSGIApp]
    keys: Callable[[], Iterator[str | None]]
    expect: int = 201


def wsgi_variants(tmp: Path) -> list[WSGIVariant]:
    def sqlite() -> SQLiteStore:
        return SQLiteStore(tmp / f"bench-wsgi-{uuid.uuid4().hex[:8]}.db")

    return [
        WSGIVariant("bare", "bare Flask app", lambda: flask_app().wsgi_app, no_key),
        WSGIVariant("memory-first", "+ retrysafe, memory, first execution",
                    lambda: guarded_wsgi(MemoryStore()), fresh_keys),
        WSGIVariant("memory-replay", "+ retrysafe, memory, replay",
                    lambda: guarded_wsgi(MemoryStore()), one_key),
        WSGIVariant("sqlite-first", "+ retrysafe, SQLite, first execution",
                    lambda: guarded_wsgi(sqlite()), fresh_keys),
        WSGIVariant("sqlite-replay", "+ retrysafe, SQLite, replay",
                    lambda: guarded_wsgi(sqlite()), one_key),
        WSGIVariant("memory+cache-replay", "+ retrysafe, memory + local cache, replay",
                    lambda: guarded_wsgi(CachedStore(MemoryStore())), one_key),
        WSGIVariant("sqlite+cache-replay", "+ retrysafe, SQLite + local cache, replay",
                    lambda: guarded_wsgi(CachedStore(sqlite())), one_key),
    ]  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One timed run of a variant, per request: wall-clock and CPU time of this process."""

    wall_us: float
    cpu_us: float


async def measure(chosen: list[Variant], runs: int, quick: bool) -> dict[str, list[Run]]:
    """Each variant's runs.

    Variants take turns run by run, so a noisy neighbour on a shared machine slows all of them
    alike instead of skewing one. CPU time (all threads of this process) leaves out the time
    other processes hold the cores. The keys are made before the clocks start.
    """
    apps = {v.name: (v.make_app(), v.keys()) for v in chosen}
    for v in chosen:
        app, keys = apps[v.name]
        for _ in range(sizes(quick, v.name)[1]):
            status = await call(app, scope_for(next(keys)))
            assert status == v.expect, f"{v.name}: got {status}"
    results: dict[str, list[Run]] = {v.name: [] for v in chosen}
    for _ in range(runs):
        for v in chosen:
            app, keys = apps[v.name]
            requests = sizes(quick, v.name)[0]
            scopes = [scope_for(next(keys)) for _ in range(requests)]
            wall, cpu = time.perf_counter_ns(), time.process_time_ns()
            for i, scope in enumerate(scopes):
                await call(app, scope)
                if i % LOOP_EVERY == 0:
                    await asyncio.sleep(0)
            cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
            results[v.name].append(Run(wall / requests / 1000, cpu / requests / 1000))
    return results


def measure_wsgi(chosen: list[WSGIVariant], runs: int, quick: bool) -> dict[str, list[Run]]:
    """:func:`measure` for WSGI variants (plain calls, no event loop)."""
    apps = {v.name: (v.make_app(), v.keys()) for v in chosen}
    for v in chosen:
        app, keys = apps[v.name]
        for _ in range(sizes(quick, v.name)[1]):
            status = call_wsgi(app, environ_for(next(keys)))
            assert status == v.expect, f"wsgi {v.name}: got {status}"
    results: dict[str, list[Run]] = {v.name: [] for v in chosen}
    for _ in range(runs):
        for v in chosen:
            app, keys = apps[v.name]
            requests = sizes(quick, v.name)[0]
            environs = [environ_for(next(keys)) for _ in range(requests)]
            wall, cpu = time.perf_counter_ns(), time.process_time_ns()
            for environ in environs:
                call_wsgi(app, environ)
            cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
            results[v.name].append(Run(wall / requests / 1000, cpu / requests / 1000))
    return results


def ratio_to_bare(runs: dict[str, list[Run]], name: str, clock: str) -> float:
    """Median over runs of (variant / the bare run of the same round): neighbours' load hits
    both runs of a round alike, so this is steadier than a ratio of two medians."""
    pairs = zip(runs[name], runs["bare"], strict=True)
    values: list[float] = [getattr(r, clock) / getattr(b, clock) for r, b in pairs]
    return statistics.median(values)


async def round_trips(store: DualStore, *, cached: bool = False) -> tuple[float, float]:
    """Store calls per request: (first execution, replay), averaged over a few requests.

    ``cached`` puts the local replay cache in front of the counting wrapper, so only the calls
    that reach the store are counted (a replay from the cache makes none).
    """
    recording = RecordingStore(store)
    app = guarded_app(CachedStore(recording) if cached else recording)
    # The first keyed request on a store also loads its scope secret (one claim and one
    # completion, once per store and process): not a request's round trips.
    assert await call(app, scope_for(str(uuid.uuid4()))) == 201
    recording.reset()
    key = str(uuid.uuid4())
    assert await call(app, scope_for(key)) == 201
    first = recording.reset().round_trips
    n = 10
    for _ in range(n):
        assert await call(app, scope_for(key)) == 201
    replay = recording.reset().round_trips / n
    return float(first), replay


def sizes(quick: bool, name: str) -> tuple[int, int]:
    """(requests per run, warmup requests) for a variant."""
    if quick:
        return 200, 20
    return (500, 200) if name.startswith("sqlite") else (2000, 500)


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="retrysafe-bench-") as tmpdir:
        tmp = Path(tmpdir)
        all_variants = variants(tmp)
        if args.profile:
            chosen = [v for v in all_variants if v.name == args.profile]
            if not chosen:
                print(f"unknown variant {args.profile!r}", file=sys.stderr)
                return 2
            profiler = cProfile.Profile()
            profiler.enable()
            await measure(chosen, 1, args.quick)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return 0
        print(f"python {platform.python_version()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs; medians of {args.runs} runs")  # fmt: skip
        per_run = await measure(all_variants, args.runs, args.quick)
        wsgi_all = wsgi_variants(tmp)
        wsgi_per_run = None if args.asgi_only else measure_wsgi(wsgi_all, args.runs, args.quick)
        trips = {
            "memory": await round_trips(MemoryStore()),
            "sqlite": await round_trips(SQLiteStore(tmp / "trips.db")),
            "memory+cache": await round_trips(MemoryStore(), cached=True),
            "sqlite+cache": await round_trips(SQLiteStore(tmp / "trips-c.db"), cached=True),
        }
    print()
    ratios = print_table(all_variants, per_run, trips)
    if wsgi_per_run is not None:
        print()
        print("WSGI (Flask 3, sync store path):")
        print()
        print_table(wsgi_all, wsgi_per_run, None)
    ok = True
    for store, (first, replay) in trips.items():
        contract = (2, 0) if store.endswith("+cache") else (2, 1)
        if (first, replay) != contract:
            print(f"{store}: round trips {first:g}/{replay:g}, contract is "
                  f"{contract[0]}/{contract[1]}", file=sys.stderr)  # fmt: skip
            ok = False
    print()
    verdict = [
        ("memory first execution ≤ 2× bare", ratios["memory-first"] <= 2),
        ("memory replay ≤ bare", ratios["memory-replay"] <= 1),
    ]
    # issue 3: the local replay cache brings a replay within 10 µs of the bare app
    bare_cpu = statistics.median(r.cpu_us for r in per_run["bare"])
    for name in ("memory+cache-replay", "sqlite+cache-replay"):
        extra = statistics.median(r.cpu_us for r in per_run[name]) - bare_cpu
        verdict.append((f"{name} within 10 µs of bare ({extra:+.1f} µs)", extra <= 10))
    for what, met in verdict:
        print(f"target {what} (CPU time): {'met' if met else 'NOT met'}")
    return 0 if ok else 1


def print_table(
    chosen: list[Variant] | list[WSGIVariant],
    per_run: dict[str, list[Run]],
    trips: dict[str, tuple[float, float]] | None,
) -> dict[str, float]:
    """Print one results table (markdown); returns each variant's CPU ratio to bare."""
    print("| variant | CPU µs/request | × bare (CPU) | wall µs/request | × bare (wall) "
          "| store round trips |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for variant in chosen:
        name, runs = variant.name, per_run[variant.name]
        if name == "bare" or trips is None:
            rt = "–"
        else:
            store, _, kind = name.rpartition("-")
            rt = f"{trips[store][0 if kind == 'first' else 1]:g}"
        cpu = statistics.median(r.cpu_us for r in runs)
        wall = statistics.median(r.wall_us for r in runs)
        ratios[name] = ratio_to_bare(per_run, name, "cpu_us")
        print(
            f"| {variant.label} | {cpu:.1f} | {ratios[name]:.2f} "
            f"| {wall:.1f} | {ratio_to_bare(per_run, name, 'wall_us'):.2f} | {rt} |"
        )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small runs (smoke test)")
    parser.add_argument("--runs", type=int, default=11, help="timed runs per variant (median)")
    parser.add_argument("--profile", metavar="VARIANT", help="cProfile one variant instead")
    parser.add_argument("--asgi-only", action="store_true", help="skip the WSGI variants")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

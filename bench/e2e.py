"""End to end: real servers under concurrent load, for every store and the peers (issue 17).

    python bench/e2e.py [--quick] [--rounds N] [--seconds S] [--servers uvicorn-1,gunicorn-2]
                        [--connections 1,10,100] [--variants bare,redis,...] [--load wrk|python]
                        [--json results.json]

``make bench-e2e`` runs it in ``bench/.venv-peers`` (the peers' own virtualenv, with the
servers added; bench/README.md says what it installs). For each server kind (uvicorn with 1
or 2 workers serving a Starlette app; gunicorn with 1 or 2 threaded workers serving its Flask
twin) every variant (``e2e_apps.VARIANTS``: the bare app, retrysafe on each store, with the
local replay cache, and the peers) runs in a server of its own, all started together; then,
round by round, each connection count and each variant in turn (the order rotating per
round, so noise hits all alike) gets a *first* run (a fresh ``Idempotency-Key`` per request)
and a *replay* run (one key, completed before), ``--seconds`` each, from wrk or the Python
load generator (``e2e_load.py``). Every run counts the handler's executions
(``e2e_apps.count_execution``) and checks them against what it sent (``e2e_report.py``); a
run that contradicts its counts is marked ✗ and the exit status is 1.

Variants whose packages are missing here (the peers outside their virtualenv) are listed as
not run. Keys, tables and files are the run's own (``be2e<tag>...``) and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_apps import DEFAULT_VARIANTS, VARIANTS, Variant, cleanup, executions, prepare
from e2e_load import generators, run_load
from e2e_report import Measurement, table
from e2e_servers import Server, ServerKind, uvicorn_flavour

DEFAULT_SERVERS = "uvicorn-1,uvicorn-2,gunicorn-1,gunicorn-2"
SETTLE_MAX = 5.0  # seconds to wait for a run's last requests to finish


@dataclass
class Run:
    """One invocation's settings and everything it measured."""

    servers: list[ServerKind]
    connections: list[int]
    variants: list[Variant]
    rounds: int
    seconds: float
    warm_seconds: float
    generator: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    measurements: list[Measurement] = field(default_factory=list)
    not_run: dict[tuple[str, str], str] = field(default_factory=dict)  # (server, variant)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _keys(run: Run, server: Server) -> str:
    """The start of every key sent to ``server``: servers of two kinds share a store."""
    return f"{run.tag}-{server.kind.name}"


def _checked(server: Server, tag: str, variant: Variant) -> None:
    """Before timing: a key twice and another once answer 201, and the handler ran as the
    variant says (twice for an idempotent one, three times for the bare app)."""
    before = executions(server.counter)
    statuses = [server.post(f"{tag}-check")[0], server.post(f"{tag}-check")[0]]
    statuses.append(server.post(f"{tag}-other")[0])
    ran = executions(server.counter) - before
    if statuses != [201, 201, 201]:
        raise RuntimeError(f"set-up requests answered {statuses}")
    if ran != (2 if variant.replays else 3):
        raise RuntimeError(f"3 requests, 2 keys: the handler ran {ran} times")


def _settled(server: Server) -> int:
    """The execution count once the requests still in flight when the load stopped look done
    (unchanged over a few reads), so the next run does not share the cores with them. Their
    count does not depend on it: executions are counted by key (:func:`_recount`)."""
    seen, still = executions(server.counter), 0
    deadline = time.monotonic() + SETTLE_MAX
    while still < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
        now = executions(server.counter)
        seen, still = now, (still + 1 if now == seen else 0)
    return seen


def _measure(run: Run, server: Server, variant: Variant, conns: int, rnd: int) -> None:
    for mode in ("first", "replay"):
        key = f"{_keys(run, server)}-{mode}-r{rnd}c{conns}"
        if mode == "replay":
            _completed(server, key)
        load = run_load(run.generator, server.url, conns, run.seconds, key, mode == "first")
        _settled(server)  # so the next run's timing does not share the cores with this one's
        m = Measurement(
            server.kind.name, variant.name, conns, mode, rnd, load, 0, variant.replays, key
        )
        m = replace(m, executions=_ran(server, m))
        run.measurements.append(m)
        _log(
            f"  {server.kind.name} c={conns} {variant.name} {mode}: {load.rps:,.0f} req/s, "
            f"p99 {load.p99_ms:.2f} ms, ran {m.executions}"
            f"{'  ✗ ' + p if (p := m.problem()) else ''}"
        )


def _completed(server: Server, key: str) -> None:
    """The key a replay run sends, sent once before it (so the run's requests replay it)."""
    status, body = server.post(key)
    if status != 201:
        raise RuntimeError(f"the replay key answered {status}: {body[:200]!r}")


def _ran(server: Server, m: Measurement) -> int:
    """The handler's executions for the run ``m``: of the keys a first run made, or of a
    replay run's key less the one request that completed it before the run."""
    if m.mode == "first":
        return executions(server.counter, m.key, fresh=True)
    return executions(server.counter, m.key) - 1


def _recount(run: Run, server: Server) -> None:
    """Once ``server`` has stopped (every request it took is finished): each of its runs'
    executions again, so a request that outlived its run's settling still counts for it."""
    for i, m in enumerate(run.measurements):
        if (m.server, m.variant) == (server.kind.name, server.variant):
            run.measurements[i] = replace(m, executions=_ran(server, m))


def _serve(run: Run, kind: ServerKind, run_dir: Path) -> None:
    servers: list[tuple[Server, Variant]] = []
    for variant in run.variants:
        if kind.door not in variant.doors:
            continue
        if variant.per_process and kind.workers > 1:
            run.not_run[(kind.name, variant.name)] = "its records live in one process"
            continue
        counter = run_dir / f"{kind.name}-{variant.name}.count"
        env = {"E2E_TAG": run.tag, "E2E_DIR": str(run_dir)}
        server = Server(kind, variant.name, env, counter, run_dir / "servers.log")
        try:
            server.start()
        except RuntimeError as exc:  # gunicorn not installed here
            run.not_run[(kind.name, variant.name)] = str(exc)
            continue
        servers.append((server, variant))
    try:
        ready: list[tuple[Server, Variant]] = []
        for server, variant in servers:
            try:
                server.wait_ready()
                _checked(server, _keys(run, server), variant)
                warm = f"{_keys(run, server)}-warm"
                run_load(run.generator, server.url, 10, run.warm_seconds, warm, True)
                _settled(server)
                ready.append((server, variant))
            except Exception as exc:  # a variant that cannot run here: say so, go on
                run.not_run[(kind.name, variant.name)] = f"{type(exc).__name__}: {exc}"
                server.stop()
        for rnd in range(run.rounds):
            for conns in run.connections:
                shift = rnd % len(ready) if ready else 0
                for server, variant in ready[shift:] + ready[:shift]:
                    _measure(run, server, variant, conns, rnd)
    finally:
        for server, _ in servers:
            server.stop()
            _recount(run, server)


def execute(run: Run) -> None:
    with tempfile.TemporaryDirectory(prefix="retrysafe-e2e-") as tmp:
        run_dir = Path(tmp)
        usable = []
        for variant in run.variants:
            try:
                prepare(variant, run.tag, run_dir)
                usable.append(variant)
            except Exception as exc:  # ImportError (a peer not installed here), a server down
                for kind in run.servers:
                    run.not_run[(kind.name, variant.name)] = f"{type(exc).__name__}: {exc}"
        run.variants = usable
        try:
            for kind in run.servers:
                _log(f"{kind.name}: starting {len(run.variants)} servers")
                _serve(run, kind, run_dir)
        finally:
            cleanup(run.tag)


def report(run: Run, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    loop, parser = uvicorn_flavour()
    lines = [
        f"e2e: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after; load from {run.generator}; "
        f"uvicorn on {loop} + {parser}, gunicorn gthread × 8 threads; "
        f"{run.rounds} round(s) × {run.seconds:g} s per run",
        "",
    ]
    titles = {name: v.title for name, v in VARIANTS.items()}
    for kind in run.servers:
        for conns in run.connections:
            if any(m.server == kind.name and m.connections == conns for m in run.measurements):
                lines += [*table(run.measurements, kind.name, conns, titles), ""]
    for (server, variant), why in run.not_run.items():
        lines.append(f"- not run: {server} {titles.get(variant, variant)}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s per run (smoke)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--seconds", type=float, default=None, help="per run; default 5 (1)")
    parser.add_argument("--servers", default=DEFAULT_SERVERS)
    parser.add_argument("--connections", default="1,10,100")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--load", choices=["wrk", "python"], default=generators()[0])
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    run = Run(
        servers=[ServerKind.parse(s) for s in args.servers.split(",")],
        connections=[int(c) for c in args.connections.split(",")],
        variants=[VARIANTS[v] for v in args.variants.split(",")],
        rounds=args.rounds or (1 if args.quick else 3),
        seconds=args.seconds or (1.0 if args.quick else 5.0),
        warm_seconds=0.5 if args.quick else 2.0,
        generator=args.load,
    )
    load_before = os.getloadavg()
    execute(run)
    print(report(run, load_before, os.getloadavg()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "measurements": [m.as_dict() for m in run.measurements],
                    "not_run": [
                        {"server": s, "variant": v, "why": why}
                        for (s, v), why in run.not_run.items()
                    ],
                },
                indent=1,
            )
        )
    return 1 if any(m.problem() for m in run.measurements) else 0


if __name__ == "__main__":
    sys.exit(main())

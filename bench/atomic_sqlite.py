"""Atomic completion on SQLite across worker processes: the "charges" scenario of issue 17.

    python bench/atomic_sqlite.py [--charges 240] [--hold 0.03] [--workers 2] [--clients 20]

uvicorn serves a Starlette app behind ``ASGIIdempotencyMiddleware(atomic=True)`` on one
SQLite file with ``--workers`` processes. Each charge opens the atomic transaction, writes a
ledger row and keeps the transaction ``--hold`` seconds (as a handler that calls out while
holding it would), then answers; the middleware commits the row with the record. ``--clients``
concurrent clients send every charge once with its own key and resend it (same key) on any
failure, as a real client would. Reported: the wall time against the single-writer bound
(charges x hold: the time the write lock must be held, whatever the scheduling), the number of
resends, and an assertion that every key has exactly one ledger row (zero duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

APP = """
import asyncio, os, sqlite3
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from retrysafe import atomic, Policy, shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.sqlite import SQLiteStore

HOLD = float(os.environ["BENCH_HOLD"])
store = SQLiteStore(os.environ["BENCH_DB"])

async def charge(request):
    body = await request.json()
    db = await atomic.atransaction()
    cur = db.execute("INSERT INTO ledger (key, cents) VALUES (?, ?)", (body["key"], 500))
    await asyncio.sleep(HOLD)
    return JSONResponse({"charge": cur.lastrowid}, status_code=201)

app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
app.add_middleware(
    ASGIIdempotencyMiddleware, store=store, atomic=True,
    policy=Policy(scope=shared_scope, wait=30.0),
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(port: int, keys: list[str], clients: int) -> tuple[float, int, list[str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)
    resends = 0
    errors: list[str] = []

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal resends
        while not queue.empty():
            key = queue.get_nowait()
            for _ in range(50):
                try:
                    r = await http.post(
                        f"http://127.0.0.1:{port}/charges",
                        json={"key": key},
                        headers={"Idempotency-Key": key},
                    )
                    if r.status_code == 201:
                        break
                    errors.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                resends += 1
            else:
                raise SystemExit(f"charge {key} never succeeded: {errors[-3:]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - start, resends, errors


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("uvicorn exited")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("uvicorn did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=240)
    parser.add_argument("--hold", type=float, default=0.03)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "app.db"
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE ledger (key TEXT NOT NULL, cents INTEGER NOT NULL)")
        (Path(tmp) / "benchapp.py").write_text(APP)
        port = free_port()
        env = {
            **os.environ,
            "BENCH_DB": str(db),
            "BENCH_HOLD": str(args.hold),
            # absolute: uvicorn runs in the temporary directory
            "PYTHONPATH": os.pathsep.join(
                [tmp, *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
            ),
        }
        cmd = [sys.executable, "-m", "uvicorn", "benchapp:app", "--port", str(port)]
        cmd += ["--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp)
        try:
            wait_ready(port, proc)
            keys = [f"charge-{uuid.uuid4()}" for _ in range(args.charges)]
            wall, resends, errors = asyncio.run(drive(port, keys, args.clients))
        finally:
            proc.terminate()
            proc.wait(30)
        with sqlite3.connect(db) as conn:
            rows = dict(conn.execute("SELECT key, count(*) FROM ledger GROUP BY key").fetchall())
        duplicates = sum(n - 1 for n in rows.values() if n > 1)
        missing = [key for key in keys if key not in rows]
        bound = args.charges * args.hold
        print(
            f"workers={args.workers} clients={args.clients} charges={args.charges} "
            f"hold={args.hold * 1000:.0f}ms: {wall:.2f} s, single-writer bound {bound:.2f} s "
            f"({wall / bound:.2f}x), resends {resends}, duplicates {duplicates}, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        if errors:
            print("  first errors:", *sorted(set(errors))[:5], sep="\n    ")
        assert duplicates == 0, f"{duplicates} duplicate charges"
        assert not missing, f"{len(missing)} charges missing"


if __name__ == "__main__":
    main()

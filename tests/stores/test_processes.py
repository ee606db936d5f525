"""Many machines, one record: duplicates spread over two OS processes execute once.

Two uvicorn processes on loopback share one store; 200 concurrent requests with one key are
spread across both. The handler records each execution in a file, so an execution in either
process is counted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kit.store_servers import POSTGRES_URL, REDIS_URL, _wait_port, free_port, require, shared_down

TESTS = Path(__file__).parent.parent  # kit.store_uvicorn_child is imported from there


@pytest.fixture(params=["redis", "postgres"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        require("Redis", shared_down(REDIS_URL))
        yield f"{REDIS_URL}?prefix=p{uuid.uuid4().hex[:8]}:"
    else:
        require("PostgreSQL", shared_down(POSTGRES_URL))
        prefix = f"p{uuid.uuid4().hex[:8]}_"
        yield f"{POSTGRES_URL}?table_prefix={prefix}"
        from retrysafe.stores.postgres import PostgresStore

        cleanup = PostgresStore(POSTGRES_URL, table_prefix=prefix)
        cleanup.drop_schema()
        cleanup.close()


def _start(url: str, run_log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RETRYSAFE_STORE_URL": url, "RUN_LOG": str(run_log), "WORK_S": "0.3"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-m", "uvicorn", "kit.store_uvicorn_child:app", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)


def test_200_duplicates_over_two_processes_execute_once(store_url, tmp_path):
    run_log = tmp_path / "runs"
    ports = [free_port(), free_port()]
    procs = [_start(store_url, run_log, port) for port in ports]
    try:
        for port in ports:
            _wait_port(port, timeout=30)

        async def main() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                # Warm both processes (their pools connect on first use) with another key.
                for port in ports:
                    await client.post(
                        f"http://127.0.0.1:{port}/warm{port}",
                        headers={"Idempotency-Key": f"warm{port}"},
                    )
                return await asyncio.gather(
                    *(
                        client.post(
                            f"http://127.0.0.1:{ports[i % 2]}/charge",
                            content=b'{"a":1}',
                            headers={"Idempotency-Key": "one-charge"},
                        )
                        for i in range(200)
                    )
                )

        responses = asyncio.run(main())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    charges = [line for line in run_log.read_text().splitlines()]
    assert len(charges) == 3, charges  # two warm-ups, one charge
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [201], [r.text for r in responses if r.status_code != 201][:3]
    bodies = {r.content for r in responses}
    assert len(bodies) == 1
    replayed = sum(r.headers.get("idempotent-replayed") == "true" for r in responses)
    assert replayed == 199

"""A separate OS process calling an agent tool on a shared SQLite store
(tests/tools/test_concurrency.py).

    python -m kit.tools_child MODE DB LEDGER [GO_FILE | FLAVOUR]

MODE ``once``: wait for GO_FILE to exist (so all workers start together), call the tool, print
its result as JSON. MODE ``crash``: call a tool that records its key and then hangs until the
test kills it with SIGKILL. MODE ``resume``: the same call as ``crash``, finishing normally.
For ``crash`` and ``resume``, FLAVOUR ``async`` makes the tool an ``async def``.
Every execution appends ``key downstream-key`` to LEDGER, so the test counts executions.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from retrysafe import current_key
from retrysafe._keys import derive_key
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import agent_run, idempotent_tool


def record(ledger: Path) -> None:
    key = current_key() or "-"
    line = f"{os.getpid()} {key} {derive_key(key, 'psp-charge', '0')}\n"
    with ledger.open("a") as f:  # O_APPEND: lines from several processes never interleave
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    mode, db, ledger_path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = SQLiteStore(db)
    if mode == "once":
        go = Path(sys.argv[4])
        deadline = time.monotonic() + 20
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.005)

        @idempotent_tool(store, name="send_refund", wait=15)
        def send_refund(customer: str, cents: int) -> dict[str, object]:
            record(ledger_path)
            time.sleep(0.2)  # stay in flight while the other workers arrive
            return {"customer": customer, "cents": cents, "by": os.getpid()}

        with agent_run("run-multiprocess"):
            print(json.dumps(send_refund("cus_1", 500)))
        return

    hang = mode == "crash"
    tool = idempotent_tool(store, name="charge", lease=1.0, wait=15)
    if sys.argv[4:] == ["async"]:

        @tool
        async def acharge(customer: str, cents: int) -> str:
            record(ledger_path)
            if hang:
                await asyncio.sleep(60)  # killed here, after the side effect
            return f"charged {customer} {cents} in {os.getpid()}"

        async def run() -> str:
            async with agent_run("run-crash"):
                return await acharge("cus_2", 700)

        print(json.dumps(asyncio.run(run())))
        return

    @tool
    def charge(customer: str, cents: int) -> str:
        record(ledger_path)
        if hang:
            time.sleep(60)  # killed here, after the side effect, before completion
        return f"charged {customer} {cents} in {os.getpid()}"

    with agent_run("run-crash"):
        print(json.dumps(charge("cus_2", 700)))


if __name__ == "__main__":
    main()

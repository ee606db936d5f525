"""Child process of tests/atomic/test_writer_gate.py: one writer of a SQLite store.

It reports ``("ready", pid)``, then performs one write through the store - a sync claim, an
async claim, or an atomic unit's transaction opened from async code - which must wait for the
parent's open transaction, and reports ``("wrote", key)`` once it committed. The busy timeout
is far (an hour): only the parent's commit can let it through.
"""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection

from retrysafe._records import Claimed, StoredResponse
from retrysafe.stores.sqlite import SQLiteStore

NEVER = 3600.0
OK = StoredResponse(201, (), b"ok")


def write(path: str, kind: str, key: str, conn: Connection) -> None:
    store = SQLiteStore(path, busy_timeout=NEVER, wal_idle=None)
    try:
        if kind == "unit":
            # The claim happens before the parent takes the lock (see the test): say ready
            # only once it is made, so the wait is the unit's own.
            async def run() -> None:
                claimed = await store.aclaim(key, "fp", NEVER)
                assert isinstance(claimed, Claimed)
                unit = store.unit(key, claimed.token, "fp", NEVER, NEVER)
                conn.send(("ready", key))
                conn.recv()  # the parent holds the lock now
                try:
                    db = await unit.aconnection()  # waits in the gate, on the event loop
                    db.execute("INSERT INTO ledger (key, cents) VALUES (?, 1)", (key,))
                    assert await unit.acomplete(OK, NEVER, NEVER)
                finally:
                    await unit.aclose()

            asyncio.run(run())
        else:
            conn.send(("ready", key))
            conn.recv()
            if kind == "sync":
                assert isinstance(store.claim(key, "fp", NEVER), Claimed)
            else:
                assert isinstance(asyncio.run(store.aclaim(key, "fp", NEVER)), Claimed)
        conn.send(("wrote", key))
    finally:
        store.close()

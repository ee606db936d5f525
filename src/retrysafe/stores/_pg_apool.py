"""A small asyncio connection pool for psycopg that runs no background tasks.

psycopg_pool's AsyncConnectionPool keeps worker tasks on its event loop, and a worker
cancelled in the middle of a maintenance task swallows the cancellation: a loop closed while
such a pool is open (an application that never awaits ``store.aclose()``, a test loop) then
hangs in ``asyncio.Runner.close()``. The store keeps one pool per event loop (``_perloop``),
so it needs one that is safe to abandon with its loop: connections are made on demand, bounded
by a semaphore, and kept idle for reuse; nothing runs between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus


class AsyncPool:
    """At most ``size`` connections; a caller waits at most ``timeout`` s for a free one."""

    def __init__(self, conninfo: str, kwargs: dict[str, Any], size: int, timeout: float) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self.acquire()
        reusable = False
        try:
            yield conn
            reusable = True
        finally:
            await self.release(conn, reusable)

    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        """A connection for the caller alone; give it back with :meth:`release`, always.

        The request path's one-statement callers use this pair directly: an
        ``asynccontextmanager`` costs a generator and two extra frames per statement."""
        if self._slots.locked():  # all in use: wait, at most the timeout (TimeoutError)
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        else:  # a free slot is taken at once; wait_for would cost a Task and loop turns (3.11)
            await self._slots.acquire()
        try:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
        except BaseException:
            self._slots.release()
            raise
        return conn

    async def release(self, conn: psycopg.AsyncConnection[Any], reusable: bool) -> None:
        """Give back a connection from :meth:`acquire`; ``reusable``: its statement ended
        normally (one that failed or was cancelled mid-statement is closed, not reused)."""
        try:
            idle = conn.info.transaction_status == TransactionStatus.IDLE
            if reusable and idle and not conn.broken:
                self._idle.append(conn)
            else:
                await conn.close()
        finally:
            self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

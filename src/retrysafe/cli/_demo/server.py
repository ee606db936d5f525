"""Serve an ASGI app with uvicorn on a free loopback port, inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn

from retrysafe.http import ASGIApp

LOOPBACK = "127.0.0.1"  # never anything but loopback: the demo is not a network service
_START_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` until the block exits; yields its base URL (``http://127.0.0.1:PORT``).

    The socket is bound here (port 0: the OS picks a free port) and handed to uvicorn, so no
    other process can take the port between choosing and binding it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="retrysafe-demo-server")
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            while not server.started:
                if task.done():  # it failed to start: surface its exception
                    await task
                    raise RuntimeError("the demo server stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()

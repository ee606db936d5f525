"""An ASGI app run by uvicorn in its own OS process (tests/stores/test_processes.py starts two).

Configured through the environment: RETRYSAFE_STORE_URL names the shared store, RUN_LOG a file
that gets one line per handler execution (appended atomically), WORK_S how long a handler
works, so duplicates overlap it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from retrysafe import open_store
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware

RUN_LOG = os.environ["RUN_LOG"]
WORK_S = float(os.environ.get("WORK_S", "0.3"))


async def handler(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    fd = os.open(RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    await asyncio.sleep(WORK_S)
    body = f"charged by {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = ASGIIdempotencyMiddleware(handler, store=open_store(), policy=Policy(scope=shared_scope))

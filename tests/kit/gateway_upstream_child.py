"""A real upstream for the gateway tests, in a process of its own (started by
:class:`kit.gateway.Upstream`): ``python -m kit.gateway_upstream_child LOG [PORT]``.

It binds a loopback port (``--port``, default any free one), prints ``PORT <n>`` on stdout once
it accepts connections, and appends one line ``METHOD PATH`` to LOG per execution, flushed
before anything else happens, so counts survive a crash and can be read by the test process.

Endpoints (raw ASGI, so nothing buffers or rewrites what the tests look at):

- ``/echo/...``        any method: JSON of method, raw path, query, headers, body
- ``/status/<n>``      answers status n with two Set-Cookie lines and its own Date/Server
- ``/stream/<name>``   streams chunks fed by ``POST /_feed/<name>`` (empty body ends it)
- ``/gate/<name>``     waits until ``POST /_open/<name>``; ``GET /_started/<name>`` waits for it
- ``/upload/<name>``   reads the request body chunk by chunk, each readable from
                       ``GET /_received/<name>`` as it arrives (``<disconnected>`` if cut off)
- ``/gzip``            a gzip-encoded body
- ``/crash/<name>``    the first time: exits the process before answering; then answers 200
- ``/crash-mid/<name>`` the first time: sends headers and one chunk, then exits; then 200

Control paths start with ``/_`` and are not counted.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import sys
from collections import defaultdict
from typing import Any

import uvicorn

LOG: Any = None
feeds: defaultdict[str, asyncio.Queue[bytes]] = defaultdict(asyncio.Queue)
received: defaultdict[str, asyncio.Queue[bytes]] = defaultdict(asyncio.Queue)
opened: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)


def record(method: str, path: str) -> None:
    LOG.write(f"{method} {path}\n")
    LOG.flush()
    os.fsync(LOG.fileno())


def seen(method: str, path: str) -> bool:
    """Whether ``method path`` ran before, in this process or one that crashed."""
    with open(LOG.name, encoding="utf-8") as log:
        return f"{method} {path}\n" in log.readlines()


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Any, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    headers = headers or [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    method, path = scope["method"], scope["path"]
    parts = path.split("/")
    name = parts[2] if len(parts) > 2 else ""
    if path.startswith("/_feed/"):
        feeds[name].put_nowait(await read_body(receive))
        await respond(send, 204, b"")
    elif path.startswith("/_open/"):
        opened[name].set()
        await respond(send, 204, b"")
    elif path.startswith("/_started/"):
        await started[name].wait()
        await respond(send, 204, b"")
    elif path.startswith("/_received/"):
        await respond(send, 200, await received[name].get(), [])
    elif path.startswith("/upload/"):
        record(method, path)
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                received[name].put_nowait(b"<disconnected>")
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if chunk:
                received[name].put_nowait(chunk)
            if not message.get("more_body"):
                break
        await respond(send, 200, json.dumps({"received": total}).encode())
    elif path.startswith("/stream/"):
        record(method, path)
        await read_body(receive)
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while chunk := await feeds[name].get():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/gate/"):
        record(method, path)
        body = await read_body(receive)
        started[name].set()
        await opened[name].wait()
        await respond(send, 201, json.dumps({"gate": name, "body": body.decode()}).encode())
    elif path == "/gzip":
        record(method, path)
        await read_body(receive)
        body = gzip.compress(b"squeezed " * 100)
        headers = [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")]
        await respond(send, 200, body, headers)
    elif path.startswith("/status/"):
        record(method, path)
        await read_body(receive)
        headers = [
            (b"content-type", b"text/plain"),
            (b"set-cookie", b"a=1; Path=/"),
            (b"set-cookie", b"b=2; Path=/"),
            (b"date", b"Mon, 01 Jan 2001 00:00:00 GMT"),
            (b"server", b"upstream-test"),
            (b"x-upstream", b"yes"),
        ]
        await respond(send, int(name), b"status " + name.encode(), headers)
    elif path.startswith(("/crash/", "/crash-mid/")) and seen(method, path):
        record(method, path)
        await read_body(receive)
        await respond(send, 200, b'{"survived": true}')
    elif path.startswith("/crash/"):
        record(method, path)
        os._exit(1)
    elif path.startswith("/crash-mid/"):
        record(method, path)
        # Read the whole request first: closing a socket with unread input sends a reset,
        # which could discard the response bytes below before the gateway reads them.
        await read_body(receive)
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # uvicorn writes straight to the socket, so these bytes are in the kernel (and will be
        # delivered before the FIN) by the time the process exits.
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        os._exit(1)
    else:
        record(method, path)
        body = await read_body(receive)
        doc = {
            "method": method,
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
        await respond(send, 200, json.dumps(doc).encode())


def main() -> None:
    global LOG
    log_path, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    LOG = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)  # connections queue in the kernel until uvicorn accepts them
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=2,  # handlers a failed test left waiting must not block exit
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

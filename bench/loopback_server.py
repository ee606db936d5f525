"""A minimal HTTP/1.1 server for the client benchmark (``bench/client.py``), raw asyncio.

Run as a subprocess: ``python bench/loopback_server.py [--nagle]``. It binds 127.0.0.1:0 and
prints ``PORT <n>`` on its first line. Endpoints:

- ``POST /charges``: counts the request (and its ``Idempotency-Key``), then answers ``201`` with
  a small JSON body — or, with the configured probability, ``503`` (no ``Retry-After``);
- ``GET /stats``: the counts as JSON;
- ``POST /reset?fail=0.5&seed=1``: zero the counts, set the failure rate and its RNG seed.

Connections are kept alive and every response leaves in **one** write. asyncio sets
``TCP_NODELAY`` on the sockets it accepts, so a small answer is never held back by Nagle's
algorithm. ``--nagle`` reproduces the classic pitfall on purpose: ``TCP_NODELAY`` off and the
head and the body written separately (as ``http.server`` does with ``HTTP/1.1``). The body then
waits for the client's ACK of the head, which Linux delays by up to 40 ms: every request costs
~40 ms whatever the client does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
from collections import Counter
from urllib.parse import parse_qs, urlsplit


class State:
    """What the server saw, and how often it fails."""

    def __init__(self) -> None:
        self.reset(0.0, 0)

    def reset(self, fail: float, seed: int) -> None:
        self.fail = fail
        self.rng = random.Random(seed)
        self.requests = 0
        self.failed = 0
        self.keys: Counter[str] = Counter()  # requests per idempotency key
        self.succeeded: Counter[str] = Counter()  # 201 answers per key

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "keys": len(self.keys),
            "keys_succeeded": len(self.succeeded),
            "max_per_key": max(self.keys.values(), default=0),
        }


def response(status: int, reason: str, body: bytes, close: bool) -> tuple[bytes, bytes]:
    extra = "connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode(), body


def answer(state: State, method: bytes, target: bytes, key: str | None) -> tuple[int, str, bytes]:
    url = urlsplit(target.decode())
    if method == b"POST" and url.path == "/charges":
        state.requests += 1
        if key is not None:
            state.keys[key] += 1
        if state.fail and state.rng.random() < state.fail:
            state.failed += 1
            return 503, "Service Unavailable", b'{"error": "busy"}'
        if key is not None:
            state.succeeded[key] += 1
        return 201, "Created", b'{"id": "ch_1", "amount": 1999}'
    if method == b"GET" and url.path == "/stats":
        return 200, "OK", json.dumps(state.stats()).encode()
    if method == b"POST" and url.path == "/reset":
        query = parse_qs(url.query)
        state.reset(float(query.get("fail", ["0"])[0]), int(query.get("seed", ["0"])[0]))
        return 200, "OK", b"{}"
    return 404, "Not Found", b"{}"


async def serve_connection(
    state: State, nagle: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if nagle:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            length, key, close = 0, None, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"idempotency-key":
                    key = value.strip().decode()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if length:
                await reader.readexactly(length)
            status, reason, body = answer(state, method, target, key)
            head_bytes, body_bytes = response(status, reason, body, close)
            if nagle:
                writer.write(head_bytes)  # two segments: the second waits for an ACK
                writer.write(body_bytes)
            else:
                writer.write(head_bytes + body_bytes)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main_async(nagle: bool) -> None:
    state = State()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(state, nagle, r, w), "127.0.0.1", 0, backlog=512
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nagle", action="store_true", help="reproduce the 40 ms pitfall")
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args.nagle))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

"""Real servers on loopback for the client tests: a raw fault server and a retrysafe app.

``LoopbackServer`` is the accept loop they share (also ``test_cut_bodies.BodyServer``'s), and
``read_request`` reads one request off a raw connection.

``FaultServer`` speaks just enough HTTP/1.1 to read one request per connection and then do what
its script says: answer, reset the connection (RST), or hang. It records the raw bytes of every
request it read, so tests can compare attempts byte for byte.

``serve_app`` runs an ASGI app under uvicorn in a thread, on a socket bound to 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackServer:
    """A listening socket on 127.0.0.1 whose accept loop hands each connection to
    :meth:`_handle` on a thread of its own. Subclasses set their state before ``__init__``."""

    backlog = 16
    conn_timeout: float | None = 10.0

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=self.backlog)
        self._sock.settimeout(0.05)  # so the accept loop notices close() promptly
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(self.conn_timeout)
            self._conns.append(conn)
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting and close every connection (a handler may still hang on one)."""
        self._stop.set()
        self._accept.join(timeout=5)
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


def read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request with a Content-Length body: ``(head, body)``, or None when the
    peer hung up first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head, body


class FaultServer(LoopbackServer):
    """One request per connection; ``script`` entries: "ok", "reset" or "hang" (last repeats)."""

    conn_timeout = None

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request = read_request(conn)
            if request is None:
                return
            head, body = request
            self.requests.append(head + b"\r\n\r\n" + body)
            action = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            if action == "ok":
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
                    b"connection: close\r\n\r\nok"
                )
                conn.close()
            elif action == "reset":
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            elif action == "hang":
                self._stop.wait()
                conn.close()


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    started = threading.Event()
    for _ in range(500):
        if server.started:
            started.set()
            break
        started.wait(0.01)
    if not started.is_set():  # pragma: no cover - a broken environment
        server.should_exit = True
        thread.join()
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class FaultProxy(LoopbackServer):
    """A TCP proxy in front of an HTTP server that injects faults, one decision per request.

    Each connection carries one request (the proxy adds ``Connection: close`` upstream and
    closes the client side after answering). Faults, drawn from a seeded RNG:

    - ``reset``: read the request, then reset the connection: never reached the server;
    - ``drop``:  forward, let the server execute and answer, then reset the client connection
      instead of relaying the answer (the nastiest case: the work was done, the caller can't
      know);
    - ``busy``:  answer 503 with ``Retry-After: 0`` without forwarding;
    - ``slow``:  forward after a short delay.
    """

    backlog = 256

    def __init__(self, upstream_port: int, rates: dict[str, float], seed: int = 0) -> None:
        import random

        self.upstream_port = upstream_port
        self.rates = rates
        self.rng = random.Random(seed)
        self.enabled = True
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__()

    def _pick(self) -> str:
        with self._lock:
            roll = self.rng.random()
            fault = "pass"
            if self.enabled:
                for name, rate in self.rates.items():
                    if roll < rate:
                        fault = name
                        break
                    roll -= rate
            self.counts[fault] = self.counts.get(fault, 0) + 1
            return fault

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        """The request to forward: its Connection header replaced by ``close``."""
        request = read_request(conn)
        if request is None:
            return None
        head, body = request
        lines = [
            line
            for line in head.split(b"\r\n")
            if line.partition(b":")[0].strip().lower() != b"connection"
        ]
        return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            request = self._read_request(conn)
            if request is None:
                conn.close()
                return
            fault = self._pick()
            if fault == "reset":
                self._reset(conn)
                return
            if fault == "busy":
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\n"
                    b"content-length: 4\r\nconnection: close\r\n\r\nbusy"
                )
                conn.close()
                return
            if fault == "slow":
                self._stop.wait(0.02)
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as up:
                up.sendall(request)
                response = b""
                while chunk := up.recv(65536):
                    response += chunk
            if fault == "drop":
                self._reset(conn)
                return
            conn.sendall(response)
            conn.close()
        except OSError:
            with contextlib.suppress(OSError):
                conn.close()

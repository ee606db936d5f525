"""Real servers on loopback, and a raw client, for tests that drive a door over the wire.

``serve_asgi`` runs an ASGI app (the middleware, the gateway) under uvicorn in a thread;
``serve_wsgi`` runs a WSGI app under the standard library's threaded ``wsgiref`` server, which
hands the application the socket as ``wsgi.input`` exactly as it arrives (a short body stays
short); ``serve_werkzeug`` under Werkzeug's, for raw request targets and chunked bodies. All
bind their socket before the server thread starts, so there is no start-up race, and all yield
the base URL.

``RawClient`` speaks bytes: it sends exactly what a test wrote (conflicting framing, a body
cut short, obs-folded headers) and reads what comes back, so tests can say what a hostile or
broken client does, which an HTTP library would refuse to send.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn

START_TIMEOUT = 20.0


class _Uvicorn(uvicorn.Server):
    """``uvicorn.Server`` that says when it is listening (no polling for readiness)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.contextmanager
def serve_asgi(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn (h11 and asyncio's loop unless ``http=``/``loop=`` say
    otherwise, e.g. ``loop="uvloop"``) on 127.0.0.1."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=512)
    port = sock.getsockname()[1]
    # "asyncio", not uvicorn's "auto": with uvloop installed, "auto" would pick it silently.
    options: dict[str, Any] = {
        "lifespan": "off",
        "log_level": "warning",
        "http": "h11",
        "loop": "asyncio",
    }
    options.update(config)
    server = _Uvicorn(uvicorn.Config(app, access_log=False, **options))
    # Server.run makes the loop that Config.loop names (uvicorn's own loop factories).
    thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
    thread.start()
    try:
        if not server.ready.wait(START_TIMEOUT):  # pragma: no cover - a broken environment
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve ``app`` with a threaded ``wsgiref`` server on 127.0.0.1."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(START_TIMEOUT)


@contextlib.contextmanager
def serve_werkzeug(app: Any) -> Iterator[str]:
    """Serve ``app`` with Werkzeug's threaded development server on 127.0.0.1: unlike
    ``wsgiref`` it gives the raw request target (``REQUEST_URI``, ``RAW_URI``) and decodes
    chunked request bodies (``wsgi.input_terminated``), as production WSGI servers do."""
    from werkzeug.serving import make_server as make_werkzeug_server

    server = make_werkzeug_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(START_TIMEOUT)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class RawClient:
    """One TCP connection to ``base_url`` that sends bytes as written.

    ``send(data)`` writes them; ``close_write()`` half-closes (the server sees end of input,
    as when a client gives up mid-upload); ``response()`` reads one HTTP/1.1 response (by
    ``Content-Length``, chunked, or to the end of the connection).
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port.rstrip("/"))), timeout=timeout)
        self._buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError(f"connection closed mid-line: {self._buf!r}")
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed after {len(self._buf)} of {n} bytes")
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def response(self) -> RawResponse | None:
        """The next response, or None when the server closed the connection without one."""
        try:
            status_line = self._line()
        except (ConnectionError, OSError):
            return None
        status = int(status_line.split()[1])
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        found = {k.lower(): v for k, v in headers}
        if "chunked" in found.get("transfer-encoding", "").lower():
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._exactly(size)
                self._line()
            while self._line():  # trailers
                pass
        elif "content-length" in found:
            body = self._exactly(int(found["content-length"]))
        else:
            while self._fill():
                pass
            body, self._buf = self._buf, b""
        return RawResponse(status, headers, body)


def raw_request(base_url: str, data: bytes, *, close_write: bool = False) -> RawResponse | None:
    """Send ``data`` on a fresh connection and read one response (None: closed without one)."""
    with RawClient(base_url) as client:
        client.send(data)
        if close_write:
            client.close_write()
        return client.response()

"""SPEC 21: an answer whose body is cut off mid-way is retried when a repeat is safe.

Real sockets on loopback: :class:`BodyServer` reads one request per connection and then runs
the next step of its script on the raw socket — send headers and half a body then hang up,
answer in full, or stream in two parts with a pause the test controls. The transports wrap
httpx's own HTTP transports, so the errors and the streaming are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from kit.client_servers import LoopbackServer, read_request
from retrysafe.client import (
    AsyncIdempotentTransport,
    CallReport,
    IdempotentTransport,
    RetryPolicy,
)
from retrysafe.errors import ConfigurationError

FAST = RetryPolicy(base=0.01, cap=0.02, deadline=10.0)
BODY = b'{"charge": "ch_1", "pad": "' + b"x" * 20_000 + b'"}'
Step = Callable[[socket.socket], None]


class BodyServer(LoopbackServer):
    """One request per connection; each connection runs the next step (the last repeats)."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[bytes] = []
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = read_request(conn)
            if request is None:
                return
            self.requests.append(request[0])
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            step(conn)

    def header(self, name: bytes) -> list[bytes]:
        """The value of header ``name`` in every request read, in order."""
        found = []
        for head in self.requests:
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == name.lower():
                    found.append(value.strip())
        return found

    def close(self) -> None:
        for thread in self._threads:  # every step ran to its end
            thread.join(timeout=5)
        super().close()


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def half(how: str) -> Step:
    """Headers promising BODY, half of it, then a clean close (FIN) or a reset (RST)."""

    def step(conn: socket.socket) -> None:
        conn.sendall(head(content_type="application/json", content_length=str(len(BODY))))
        conn.sendall(BODY[: len(BODY) // 2])
        if how == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return step


def full(body: bytes = BODY, **headers: str) -> Step:
    def step(conn: socket.socket) -> None:
        headers.setdefault("content_type", "application/json")
        conn.sendall(head(content_length=str(len(body)), connection="close", **headers) + body)

    return step


@pytest.fixture
def servers() -> Iterator[list[BodyServer]]:
    made: list[BodyServer] = []
    yield made
    for made_server in made:
        made_server.close()


def serve(servers: list[BodyServer], *steps: Step) -> BodyServer:
    s = BodyServer(*steps)
    servers.append(s)
    return s


def call(flavor: str, method: str, url: str, retry: RetryPolicy = FAST) -> httpx.Response:
    kw: dict[str, Any] = {"timeout": httpx.Timeout(5.0)}
    if method == "POST":
        kw["json"] = {"amount": 5}
    if flavor == "sync":
        with httpx.Client(transport=IdempotentTransport(retry=retry)) as client:
            return client.request(method, url, **kw)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=AsyncIdempotentTransport(retry=retry)) as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def report(response: httpx.Response) -> CallReport:
    info = response.extensions["retrysafe"]
    assert isinstance(info, CallReport)
    return info


# -- the bug: a keyed call whose answer is cut off ------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_keyed_answer_cut_off_midway_is_retried_and_the_replay_returned(
    flavor: str, servers: list[BodyServer], how: str
) -> None:
    s = serve(servers, half(how), full(idempotent_replayed="true"))
    response = call(flavor, "POST", s.url + "/charges")
    assert response.status_code == 200
    assert response.content == BODY
    assert response.json()["charge"] == "ch_1"
    keys = s.header(b"idempotency-key")
    assert len(keys) == 2
    assert keys[0] == keys[1]  # the same key: the server replays
    assert s.header(b"idempotency-attempt") == [b"1", b"2"]
    info = report(response)
    assert (info.attempts, info.outcome, info.replayed) == (2, "replayed", True)
    assert info.key == keys[0].decode()
    error = info.history[0].error or ""
    expected = "RemoteProtocolError" if how == "close" else "ReadError"
    assert error.startswith(expected), error


def test_an_idempotent_method_is_retried_without_a_key(
    flavor: str, servers: list[BodyServer]
) -> None:
    s = serve(servers, half("close"), full())
    response = call(flavor, "GET", s.url + "/charges/ch_1")
    assert response.content == BODY
    assert s.header(b"idempotency-key") == []
    assert report(response).attempts == 2


def test_an_unkeyed_post_cut_off_is_not_retried(flavor: str, servers: list[BodyServer]) -> None:
    s = serve(servers, half("close"), full())
    unkeyed = FAST.replace(keyed_methods=frozenset())
    with pytest.raises(httpx.RemoteProtocolError):
        call(flavor, "POST", s.url + "/charges", retry=unkeyed)
    assert len(s.requests) == 1  # it may have run: a blind repeat could charge twice


def test_every_cut_exhausts_the_attempts_with_the_key(
    flavor: str, servers: list[BodyServer]
) -> None:
    s = serve(servers, half("close"))
    with pytest.raises(httpx.TransportError) as caught:
        call(flavor, "POST", s.url + "/charges")
    assert len(s.requests) == 3
    assert getattr(caught.value, "key", None) == s.header(b"idempotency-key")[0].decode()


# -- streams stay streams ----------------------------------------------------------------------


def stream(
    flavor: str, url: str, each: Callable[[bytes], None] = lambda chunk: None
) -> tuple[httpx.Response, bytes]:
    """POST ``url`` as a streamed call; ``each`` sees every raw chunk as it arrives. Returns
    the response and its raw (still content-encoded) body."""
    body = b""
    if flavor == "sync":
        with (
            httpx.Client(transport=IdempotentTransport(retry=FAST)) as client,
            client.stream("POST", url, json={}) as response,
        ):
            for chunk in response.iter_raw():
                each(chunk)
                body += chunk
        return response, body

    async def go() -> tuple[httpx.Response, bytes]:
        nonlocal body
        async with (
            httpx.AsyncClient(transport=AsyncIdempotentTransport(retry=FAST)) as client,
            client.stream("POST", url, json={}) as response,
        ):
            async for chunk in response.aiter_raw():
                each(chunk)
                body += chunk
            return response, body

    return asyncio.run(go())


def stream_of(
    first: bytes, second: bytes, *, chunked: bool, ctype: str, sent: threading.Event
) -> tuple[Step, threading.Event]:
    """A step that sends headers + ``first``, waits for the test's go, then ``second``."""
    go = threading.Event()

    def step(conn: socket.socket) -> None:
        if chunked:
            conn.sendall(head(content_type=ctype, transfer_encoding="chunked"))
            conn.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        else:
            length = str(len(first) + len(second))
            conn.sendall(head(content_type=ctype, content_length=length) + first)
        # Bounded: if the client wrongly waited for the whole body, the test fails, not hangs.
        go.wait(timeout=3.0)
        sent.set()
        if chunked:
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        else:
            conn.sendall(second)

    return step, go


SHAPES = {
    "sse-chunked": (True, "text/event-stream", b"data: one\n\n", b"data: two\n\n"),
    "ndjson-chunked": (True, "application/x-ndjson", b'{"t": 1}\n', b'{"t": 2}\n'),
    "sse-with-length": (False, "text/event-stream", b"data: one\n\n", b"data: two\n\n"),
    "large-with-length": (False, "application/octet-stream", b"a" * 65536, b"b" * (2 << 20)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_streams_are_delivered_incrementally(
    flavor: str, servers: list[BodyServer], shape: str
) -> None:
    chunked, ctype, first, second = SHAPES[shape]
    sent = threading.Event()
    step, go = stream_of(first, second, chunked=chunked, ctype=ctype, sent=sent)
    s = serve(servers, step)
    early: list[bool] = []  # per chunk: did it arrive before the server sent the second part?

    def seen(chunk: bytes) -> None:
        early.append(not sent.is_set())
        go.set()  # got something: let the server go on

    response, body = stream(flavor, s.url + "/events", seen)
    assert early[0], "the first chunk waited for the rest of the body"
    assert body == first + second
    assert report(response).attempts == 1
    assert len(s.header(b"idempotency-key")) == 1


def test_a_small_keyed_answer_to_a_stream_call_is_served_from_memory_after_a_cut(
    flavor: str, servers: list[BodyServer]
) -> None:
    packed = gzip.compress(BODY)
    s = serve(servers, half("close"), full(packed, content_encoding="gzip"))
    response, raw = stream(flavor, s.url + "/charges")
    decoded = gzip.decompress(raw)
    assert decoded == BODY  # raw bytes stay content-encoded; httpx decodes as it would have
    assert report(response).attempts == 2
    assert response.headers["content-encoding"] == "gzip"


# -- the rule, on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        ("POST", 200, {"content-length": "20"}, True),
        ("GET", 404, {"content-length": str(1 << 20)}, True),
        ("POST", 200, {"content-length": str((1 << 20) + 1)}, False),  # over the cap
        ("POST", 200, {"content-length": "0"}, False),  # nothing to read
        ("POST", 200, {}, False),  # close-delimited
        ("POST", 200, {"transfer-encoding": "chunked"}, False),  # how streams are sent
        ("POST", 200, {"transfer-encoding": "chunked", "content-length": "5"}, False),
        ("POST", 200, {"content-type": "text/event-stream", "content-length": "5"}, False),
        ("POST", 200, {"content-type": "Text/Event-Stream; x=1", "content-length": "5"}, False),
        ("HEAD", 200, {"content-length": "5"}, False),  # no body whatever it says
        ("POST", 204, {"content-length": "5"}, False),
        ("GET", 304, {"content-length": "5"}, False),
        ("POST", 200, {"content-length": "5, 5"}, False),  # for httpx to judge
        ("POST", 200, {"content-length": "²"}, False),  # a digit to str.isdigit only
    ],
)
def test_which_bodies_are_read_first(
    method: str, status: int, headers: dict[str, str], expected: bool
) -> None:
    raw = {name: value.encode("latin-1") for name, value in headers.items()}  # as on the wire
    assert FAST.buffers(method, status, httpx.Headers(raw)) is expected


def test_buffer_limit_zero_turns_reading_first_off_and_negative_is_refused() -> None:
    off = FAST.replace(buffer_limit=0)
    assert not off.buffers("POST", 200, httpx.Headers({"content-length": "5"}))
    with pytest.raises(ConfigurationError):
        FAST.replace(buffer_limit=-1)

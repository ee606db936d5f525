"""The gateway against hostile request bytes: route bypass by path spelling, request smuggling.

A real gateway (``retrysafe.gateway.Gateway`` under uvicorn, with the gateway's own server
settings) sits in front of :class:`WireUpstream`, a raw socket server that records the exact
bytes every forwarded request had on its wire. Clients are raw sockets (``RawClient``), so the
tests send what an HTTP library would refuse to: dot segments, absolute-form targets, both
``Content-Length`` and ``Transfer-Encoding``, obs-folded fields.

The invariants checked after every exchange: nothing the gateway refused reached the upstream;
what did reach it has one framing (never ``Content-Length`` and ``Transfer-Encoding``
together), a body equal to the one the client sent (the one the fingerprint covered), and the
request target the route was chosen on, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from kit.gateway import serve_in_thread
from kit.servers import RawClient, RawResponse
from retrysafe.gateway import GatewayConfig, RoutePolicy, create_app
from retrysafe.gateway._config import Timeouts

WAIT = 20.0  # bounds a hang only


@dataclass
class Received:
    """One request as the upstream read it off its socket."""

    request_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes  # after de-chunking

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


class WireUpstream:
    """A loopback HTTP/1.1 server that records each request's bytes, then answers 200 and
    closes; with ``hang=True`` it reads the request and never answers (until closed)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.received: list[Received] = []
        self.errors: list[str] = []  # requests it could not parse (bad framing reached it)
        self.arrived = threading.Condition()
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        reader = conn.makefile("rb")
        with contextlib.suppress(OSError, ValueError):
            try:
                request = _read(reader)
            except ValueError as exc:
                with self.arrived:
                    self.errors.append(str(exc))
                    self.arrived.notify_all()
                raise
            if request is None:
                return
            with self.arrived:
                self.received.append(request)
                self.arrived.notify_all()
            if self.hang:
                self._closed.wait(WAIT)
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
                    b"connection: close\r\n\r\nok"
                )
        with contextlib.suppress(OSError):
            conn.close()

    def wait_for(self, count: int) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, WAIT)
            return list(self.received)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


def _read(reader: BinaryIO) -> Received | None:
    """One request, framed strictly by RFC 9112 §6.3 (Transfer-Encoding wins over a length)."""
    readline, read = reader.readline, reader.read
    request_line = readline().rstrip(b"\r\n")
    if not request_line:
        return None
    headers: list[tuple[bytes, bytes]] = []
    while (line := readline()) not in (b"\r\n", b"\n", b""):
        if line[:1] in (b" ", b"\t"):
            raise ValueError(f"obs-fold reached the upstream: {line!r}")
        name, _, value = line.rstrip(b"\r\n").partition(b":")
        headers.append((name, value.strip()))
    names = [n.lower() for n, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        raise ValueError(
            f"both Content-Length and Transfer-Encoding reached the upstream: {headers}"
        )
    body = b""
    if b"transfer-encoding" in names:
        while size := int(readline().split(b";")[0], 16):
            body += read(size)
            readline()
        while readline() not in (b"\r\n", b""):  # trailers
            pass
    elif b"content-length" in names:
        lengths = {v for n, v in headers if n.lower() == b"content-length"}
        if len(lengths) != 1 or names.count(b"content-length") != 1:
            raise ValueError(f"Content-Length sent {names.count(b'content-length')} times")
        body = read(int(lengths.pop()))
    return Received(request_line, headers, body)


@pytest.fixture
def upstream() -> Iterator[WireUpstream]:
    up = WireUpstream()
    yield up
    up.close()


@contextlib.contextmanager
def running(upstream: str, tmp_path: Path, **fields: Any) -> Iterator[str]:
    config = GatewayConfig(
        upstream=upstream,
        store=f"sqlite:///{tmp_path / 'gateway.db'}",
        # Not about who owns a key: requests carry no credentials, one shared scope.
        policy=RoutePolicy(anonymous="shared"),
        routes=(RoutePolicy(path="/pay", required=True, anonymous="shared"),),
        **fields,
    )
    with serve_in_thread(create_app(config)) as url:
        yield url


@pytest.fixture
def gateway(upstream: WireUpstream, tmp_path: Path) -> Iterator[str]:
    """A gateway whose ``/pay`` route requires a key, in front of ``upstream``."""
    with running(upstream.url, tmp_path) as url:
        yield url


def exchange(url: str, data: bytes, *, expect_close: bool = False) -> RawResponse | None:
    """Send ``data`` and read one response; with ``expect_close``, also require that the
    gateway then closed the connection without sending anything more (no second response to
    bytes smuggled after the first request)."""
    with RawClient(url, timeout=WAIT) as client:
        client.send(data)
        first = client.response()
        if expect_close:
            assert first is not None, "the gateway closed the connection without answering"
            rest = b""
            while chunk := client.sock.recv(65536):  # a timeout here fails the test
                rest += chunk
            assert rest == b"", f"the gateway answered more: {rest!r}"
        return first


def problem(response: RawResponse | None, status: int) -> dict[str, object]:
    assert response is not None, "the gateway closed the connection without answering"
    assert response.status == status, (response.status, response.body)
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, object] = json.loads(response.body)
    assert doc["status"] == status
    return doc


def forwarded_once(upstream: WireUpstream) -> Received:
    """The one request the upstream received, checked for sane framing."""
    (seen,) = upstream.wait_for(1)
    assert not upstream.errors, upstream.errors
    names = [n.lower() for n, _ in seen.headers]
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    return seen


def nothing_forwarded(upstream: WireUpstream) -> None:
    assert upstream.received == []
    assert upstream.errors == []


def post(
    target: bytes, *, key: bytes | None = None, extra: bytes = b"", body: bytes = b"{}"
) -> bytes:
    head = b"POST " + target + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    if key is not None:
        head += b"Idempotency-Key: " + key + b"\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


# ---- A. the path matched is the path forwarded -------------------------------------------

DOT_SEGMENTS = [
    b"/x/../pay",
    b"/x/./../pay",
    b"/./pay",
    b"/x/%2e%2e/pay",
    b"/x/.%2E/pay",
    b"/x/%2E./pay",
    b"/x/..;/pay",  # Tomcat reads ..;/ as ../
    b"/x%2F..%2Fpay",  # one segment here, three once the upstream decodes %2F
    b"/x\\..\\pay",  # IIS reads \ as /
    b"/pay/..",
]


@pytest.mark.parametrize("target", DOT_SEGMENTS, ids=lambda t: t.decode())
def test_dot_segments_are_refused_not_resolved_elsewhere(
    gateway: str, upstream: WireUpstream, target: bytes
) -> None:
    # On main the route was matched on "/x/../pay" (no key needed) and httpx resolved the dot
    # segments afterwards: a keyless POST ran on the upstream's /pay.
    response = exchange(gateway, post(target))
    doc = problem(response, 400)
    assert str(doc["type"]).endswith("path-refused")
    assert "dot segment" in str(doc["detail"])
    nothing_forwarded(upstream)


SPELLINGS = [
    b"//pay",  # nginx merges slashes
    b"/x//../pay",
    b"/PAY",  # case-insensitive upstreams (IIS, ASP.NET)
    b"/Pay/charges",
    b"/pay;jsessionid=1",  # servlet containers drop ;params
    b"/pay%3Bx",
    b"/%70ay",  # %70 is 'p'
    b"/pay%2Fcharges",  # decoded, this is /pay/charges
    b"/pay\\charges",
]


@pytest.mark.parametrize("target", SPELLINGS, ids=lambda t: t.decode())
def test_other_spellings_of_a_route_do_not_escape_its_policy(
    gateway: str, upstream: WireUpstream, target: bytes
) -> None:
    """Each of these is /pay (or below) to some upstream: without a key it must not run."""
    response = exchange(gateway, post(target))
    assert response is not None
    assert response.status == 400, (response.status, response.body)
    nothing_forwarded(upstream)


def test_the_bytes_forwarded_are_the_bytes_matched(gateway: str, upstream: WireUpstream) -> None:
    # Characters httpx would re-encode ({ } " ` < >) and escapes it keeps: the upstream must
    # see the request target exactly as the gateway matched it (under the /pay route).
    target = b'/pay/{id}/"q"/`x`/a%2Fb/%7e/caf%C3%A9?q=<a>&q="b"&q=%20&c={d}'
    response = exchange(gateway, post(target, key=b"k-bytes"))
    assert response is not None
    assert response.status == 200, response.body
    assert forwarded_once(upstream).target == target


def test_the_route_is_chosen_on_the_forwarded_path_under_an_upstream_prefix(
    upstream: WireUpstream, tmp_path: Path
) -> None:
    with running(upstream.url + "/api", tmp_path) as url:
        response = exchange(url, post(b"/pay/x", key=b"k-prefix"))
        assert response is not None
        assert response.status == 200
        assert forwarded_once(upstream).target == b"/api/pay/x"
        refused = exchange(url, post(b"/q/../pay/x"))
    problem(refused, 400)
    assert len(upstream.received) == 1


@pytest.mark.parametrize(
    "target", [b"http://evil.example/pay", b"http://127.0.0.1/x", b"*"], ids=lambda t: t.decode()
)
def test_absolute_and_asterisk_form_targets_are_refused(
    gateway: str, upstream: WireUpstream, target: bytes
) -> None:
    # The gateway is a reverse proxy: it forwards paths to its one upstream, never to the
    # authority a client names (on main this was a bare 500 from httpx's URL parser).
    response = exchange(gateway, post(target))
    doc = problem(response, 400)
    assert "origin-form" in str(doc["detail"])
    nothing_forwarded(upstream)


def test_fragments_in_the_target_are_refused(gateway: str, upstream: WireUpstream) -> None:
    response = exchange(gateway, post(b"/pay#frag", key=b"k-frag"))
    problem(response, 400)
    nothing_forwarded(upstream)


# ---- B. framing: one framing, the fingerprinted body, nothing smuggled -------------------


def chunked_post(target: bytes, framing: bytes, chunks: list[bytes], key: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return (
        b"POST "
        + target
        + b" HTTP/1.1\r\nHost: gw\r\nIdempotency-Key: "
        + key
        + b"\r\n"
        + framing
        + b"\r\n"
        + body
    )


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 23\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",  # obs-folded
    ],
    ids=["cl0", "cl5", "te-first", "te-upper", "te-folded"],
)
def test_content_length_with_transfer_encoding_is_refused_before_anything_runs(
    gateway: str, upstream: WireUpstream, framing: bytes
) -> None:
    # On main: forwarded with the client's Content-Length and the chunked body re-framed, so
    # the upstream ran an empty or truncated POST, the client got a bare 500 and the key was
    # released, so every retry ran the upstream again.
    request = chunked_post(b"/pay", framing, [b"hello", b" world"], b"k-smuggle")
    smuggled = b"POST /pay HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n"
    response = exchange(gateway, request + smuggled, expect_close=True)
    doc = problem(response, 400)
    assert str(doc["type"]).endswith("framing-refused")
    assert "Content-Length" in str(doc["detail"])
    assert "Transfer-Encoding" in str(doc["detail"])
    assert response is not None
    assert response.header("connection") == "close"
    # Nothing was claimed: the same key with a well-framed body runs once, normally.
    retry = exchange(
        gateway,
        chunked_post(
            b"/pay", b"Transfer-Encoding: chunked\r\n", [b"hello", b" world"], b"k-smuggle"
        ),
    )
    assert retry is not None
    assert retry.status == 200
    seen = forwarded_once(upstream)
    assert seen.body == b"hello world"


def test_transfer_encoding_on_http_1_0_is_refused(gateway: str, upstream: WireUpstream) -> None:
    # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    request = (
        b"POST /pay HTTP/1.0\r\nHost: gw\r\nIdempotency-Key: k-10\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    response = exchange(gateway, request, expect_close=True)
    doc = problem(response, 400)
    assert "HTTP/1.0" in str(doc["detail"])
    nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: identity, chunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 0x5\r\n",
        b"Content-Length: 5 5\r\n",
        b"Content-Length: 1_000\r\n",
        b"Content-Length: \r\n",
    ],
    ids=lambda f: f.decode().strip().replace("\r\n", " | "),
)
def test_unusable_framing_is_refused(gateway: str, upstream: WireUpstream, framing: bytes) -> None:
    request = chunked_post(b"/pay", framing, [b"hello"], b"k-bad")
    response = exchange(gateway, request, expect_close=True)
    assert response is not None
    assert 400 <= response.status < 600
    assert response.status != 500
    nothing_forwarded(upstream)


def test_repeated_equal_content_lengths_are_forwarded_once(
    gateway: str, upstream: WireUpstream
) -> None:
    request = (
        b"POST /pay HTTP/1.1\r\nHost: gw\r\nIdempotency-Key: k-cl\r\n"
        b"Content-Length: 5\r\nContent-Length: 5, 5\r\n\r\nhello"
    )
    response = exchange(gateway, request)
    assert response is not None
    assert response.status == 200
    seen = forwarded_once(upstream)
    assert seen.values(b"content-length") == [b"5"]
    assert seen.body == b"hello"


@pytest.mark.parametrize("key", [b"k-chunked", None], ids=["keyed", "unkeyed"])
def test_chunked_bodies_reach_the_upstream_unchanged(
    gateway: str, upstream: WireUpstream, key: bytes | None
) -> None:
    target = b"/pay" if key else b"/other"
    request = chunked_post(
        target, b"Transfer-Encoding: Chunked\r\n", [b"a" * 7, b"\x00\xff", b"end"], key or b"-"
    )
    if key is None:
        request = request.replace(b"Idempotency-Key: -\r\n", b"")
    response = exchange(gateway, request)
    assert response is not None
    assert response.status == 200
    assert forwarded_once(upstream).body == b"a" * 7 + b"\x00\xff" + b"end"


def test_obs_folded_fields_are_unfolded_before_forwarding(
    gateway: str, upstream: WireUpstream
) -> None:
    # RFC 9112 §5.2: a proxy replaces obs-fold with SP (or refuses); it never forwards it.
    response = exchange(gateway, post(b"/pay", key=b"k-fold", extra=b"X-Note: a\r\n  b\r\n"))
    assert response is not None
    assert response.status == 200
    assert forwarded_once(upstream).values(b"x-note") == [b"a b"]


def test_hop_by_hop_fields_and_those_connection_names_stop_at_the_gateway(
    gateway: str, upstream: WireUpstream
) -> None:
    extra = (
        b"Connection: keep-alive, Upgrade, X-Secret, Content-Length\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX-Secret: for-this-hop\r\n"
        b"TE: trailers\r\nTrailer: X-Late\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Kept: yes\r\n"
    )
    response = exchange(gateway, post(b"/pay", key=b"k-hop", extra=extra, body=b'{"a":1}'))
    assert response is not None
    assert response.status == 200
    seen = forwarded_once(upstream)
    names = {n.lower() for n, _ in seen.headers}
    dropped = {b"connection", b"upgrade", b"x-secret", b"te", b"trailer", b"keep-alive"}
    assert not names & (dropped | {b"proxy-connection", b"proxy-authorization"})
    assert seen.values(b"x-kept") == [b"yes"]
    # Connection named Content-Length: the gateway frames the body itself, correctly.
    assert seen.body == b'{"a":1}'


# ---- transport failures are problems that say what failed ------------------------------


def test_an_upstream_timeout_says_what_timed_out_and_after_how_long(tmp_path: Path) -> None:
    hanging = WireUpstream(hang=True)
    try:
        with running(hanging.url, tmp_path, timeouts=Timeouts(read=0.25)) as url:
            response = exchange(url, post(b"/pay", key=b"k-slow"))
    finally:
        hanging.close()
    doc = problem(response, 504)
    detail = str(doc["detail"])
    assert "no response" in detail, detail
    assert "0.25 s" in detail, detail
    assert "timeouts.read" in detail, detail


def test_a_malformed_upstream_response_is_a_502_problem(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        upstream_url = f"http://127.0.0.1:{server.getsockname()[1]}"
        with running(upstream_url, tmp_path) as url:
            response = exchange(url, post(b"/pay", key=b"k-malformed"))
    finally:
        thread.join(WAIT)
        server.close()
    doc = problem(response, 502)
    assert "upstream" in str(doc["detail"])


def test_an_upstream_response_with_both_framings_is_not_relayed_with_its_length(
    tmp_path: Path,
) -> None:
    # The upstream's chunked body, de-chunked by the forwarder, under its Content-Length: 3:
    # on main the client read "hel" as a complete response (the rest never arrived).
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n3\r\nhel\r\n8\r\nlo world\r\n0\r\n\r\n"
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        upstream_url = f"http://127.0.0.1:{server.getsockname()[1]}"
        with running(upstream_url, tmp_path) as url:
            response = exchange(url, post(b"/pay", key=b"k-both"))
    finally:
        thread.join(WAIT)
        server.close()
    assert response is not None
    assert response.status == 200
    assert response.header("content-length") is None
    assert response.body == b"hello world"

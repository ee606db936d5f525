"""The pure rules behind the gateway's refusals: which route a path is under, which framing is
ambiguous. Over the wire, the same rules are driven in tests/adversarial/test_gateway.py."""

from __future__ import annotations

import pytest

from retrysafe.gateway._framing import FramingRefused, declared_length
from retrysafe.gateway._target import PathRefused, Prefix, choose

ROUTES = [Prefix.of(p) for p in ("/pay/refunds", "/pay", "/files")]  # longest first


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/pay", 1),
        (b"/pay/", 1),
        (b"/PAY/Refunds/7", 0),
        (b"/payments", None),
        (b"/", None),
        (b"/files/a%2Fb", 2),  # every reading is under /files: forwarded as sent
        (b"/files/a;v=1", 2),
        (b"/other/x%2Fy", None),
        (b"/pay/caf%C3%A9", 1),
    ],
)
def test_the_route_is_the_same_under_every_reading(path: bytes, route: int | None) -> None:
    assert choose(path, b"", ROUTES) == route


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (b"/x/../pay", "dot segment"),
        (b"/x/%2E%2e/pay", "dot segment"),
        (b"/x/..;/pay", "dot segment"),
        (b"/x%5C..%5Cpay", "dot segment"),
        (b"/pay%2Frefunds", "different routes"),  # /pay or /pay/refunds
        (b"/pay;x/refunds", "different routes"),
        (b"//pay", "different routes"),
        (b"/%70ay", "different routes"),
        (b"http://evil/pay", "origin-form"),
        (b"*", "origin-form"),
        (b"/pay#x", "fragment"),
        (b"/pay/\xc3\xa9", "printable ASCII"),
    ],
)
def test_refused_paths_say_why(path: bytes, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        choose(path, b"", ROUTES)


def test_a_fragment_or_raw_bytes_in_the_query_are_refused_too() -> None:
    with pytest.raises(PathRefused, match="fragment"):
        choose(b"/pay", b"a=1#x", ROUTES)
    with pytest.raises(PathRefused, match="printable"):
        choose(b"/pay", b"a=\xff", ROUTES)


@pytest.mark.parametrize(
    ("version", "headers", "length"),
    [
        ("1.1", [], None),
        ("1.1", [(b"Content-Length", b"12")], 12),
        ("1.1", [(b"content-length", b"5"), (b"content-length", b"5, 5")], 5),
        ("1.1", [(b"Transfer-Encoding", b"Chunked")], None),
        ("1.0", [(b"Content-Length", b"0")], 0),
    ],
)
def test_declared_length(version: str, headers: list[tuple[bytes, bytes]], length: int) -> None:
    assert declared_length(version, headers) == length


@pytest.mark.parametrize(
    ("version", "headers", "reason"),
    [
        ("1.1", [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], "both"),
        ("1.0", [(b"transfer-encoding", b"chunked")], "HTTP/1.0"),
        ("1.1", [(b"transfer-encoding", b"chunked, identity")], "only 'chunked'"),
        ("1.1", [(b"transfer-encoding", b"gzip, chunked")], "only 'chunked'"),
        ("1.1", [(b"transfer-encoding", b"xchunked")], "only 'chunked'"),
        ("1.1", [(b"transfer-encoding", b"chunked")] * 2, "only 'chunked'"),
        ("1.1", [(b"content-length", b"5"), (b"content-length", b"6")], "single length"),
        ("1.1", [(b"content-length", b"+5")], "single length"),
        ("1.1", [(b"content-length", b"")], "single length"),
        ("1.1", [(b"content-length", "５".encode())], "single length"),
    ],
)
def test_ambiguous_framing_is_refused(
    version: str, headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    # uvicorn's h11 refuses most of these itself; other servers (httptools) may not.
    with pytest.raises(FramingRefused, match=reason):
        declared_length(version, headers)

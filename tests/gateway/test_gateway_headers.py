"""Hop-by-hop removal (RFC 9110 §7.6.1) and forwarding headers (RFC 7239), as pure functions."""

from __future__ import annotations

from retrysafe.gateway._headers import HOP_BY_HOP, forwarded_headers, strip_hop_by_hop


def test_strips_standard_and_connection_named_fields() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Secret ,x-other"),
        (b"connection", b"Close"),
        (b"X-Secret", b"1"),
        (b"X-OTHER", b"2"),
        (b"Close", b"?"),  # named by the second Connection line
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Expect", b"100-continue"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"3"),
    ]


def test_every_listed_field_is_removed_alone() -> None:
    for name in HOP_BY_HOP:
        assert strip_hop_by_hop([(name.upper(), b"v"), (b"x-keep", b"1")]) == [(b"x-keep", b"1")]


def test_forwarded_headers_for_a_fresh_request() -> None:
    out = forwarded_headers(
        [(b"host", b"api.example:8080"), (b"a", b"1")], ("127.0.0.1", 5), "http"
    )
    assert out == [
        (b"a", b"1"),
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"api.example:8080"),
        (b"forwarded", b'for=127.0.0.1;proto=http;host="api.example:8080"'),
    ]


def test_forwarded_headers_append_to_earlier_hops_and_replace_forgeable_ones() -> None:
    headers = [
        (b"X-Forwarded-For", b"203.0.113.1"),
        (b"x-forwarded-for", b"198.51.100.2"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"forged"),
        (b"Forwarded", b"for=203.0.113.1"),
        (b"Host", b'we"ird'),
    ]
    out = dict(forwarded_headers(headers, ("::1", 5), "https"))
    assert out[b"x-forwarded-for"] == b"203.0.113.1, 198.51.100.2, ::1"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b'we"ird'
    # RFC 7239 §6: IPv6 bracketed and quoted; quoted-string escapes the '"' in host.
    assert out[b"forwarded"] == b'for=203.0.113.1, for="[::1]";proto=https;host="we\\"ird"'
    names = [n.lower() for n, _ in forwarded_headers(headers, ("::1", 5), "https")]
    assert names.count(b"x-forwarded-for") == 1
    assert b"host" not in names


def test_unknown_client_address() -> None:
    out = dict(forwarded_headers([], None, "http"))
    assert b"x-forwarded-for" not in out
    assert out[b"forwarded"] == b"for=unknown;proto=http"


def test_upstream_target_is_the_raw_target_under_a_path_prefix() -> None:
    import httpx

    from retrysafe.gateway._forward import Forwarder
    from retrysafe.gateway._metrics import GatewayMetrics

    forwarder = Forwarder("http://127.0.0.1:9000/api/", httpx.AsyncClient(), GatewayMetrics())
    scope = {"path": "/a/b c", "raw_path": b"/a%2Fb/{x}/./", "query_string": b"x=%20&x=<2>"}
    # Byte for byte: httpx would have resolved the dot segment and escaped the braces.
    assert forwarder._target(scope) == b"/api/a%2Fb/{x}/./?x=%20&x=<2>"
    assert forwarder._target({"path": "/", "query_string": b""}) == b"/api/"

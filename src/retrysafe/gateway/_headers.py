"""Which headers a proxy forwards, and the ``X-Forwarded-*``/``Forwarded`` headers it adds.

No I/O. Headers are ``(bytes, bytes)`` pairs as ASGI and httpx carry them, so values pass
through byte for byte and repeated fields (``Set-Cookie``) stay separate lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, plus the fields the
# Connection header itself names. Proxy-Authorization/Proxy-Authenticate are meant for this hop
# (RFC 9110 §11.7). Keep-Alive, Proxy-Connection and Upgrade are legacy or hop-scoped.
# Expect is answered by our own server (it sent the 100 Continue); forwarding it would make
# the upstream wait for a second one (RFC 9110 §10.1.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)


def strip_hop_by_hop(headers: RawHeaders) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop fields, including any the Connection header lists."""
    named = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return [(name, value) for name, value in headers if name.lower() not in named]


def forwarded_headers(
    headers: RawHeaders, client: tuple[str, int] | None, scheme: str
) -> list[tuple[bytes, bytes]]:
    """``headers`` (already stripped) with X-Forwarded-For/Proto/Host and Forwarded added.

    X-Forwarded-For and Forwarded are appended to what earlier proxies wrote (RFC 7239 §4:
    one element per hop). X-Forwarded-Proto and X-Forwarded-Host describe the request as this
    gateway received it, replacing any earlier value from the client (which could be forged).
    The Host header itself is dropped so the upstream sees its own authority (as nginx's
    ``proxy_pass`` does); the original is in X-Forwarded-Host and Forwarded ``host=``.
    """
    host = _first(headers, b"host")
    replaced = {b"x-forwarded-proto", b"x-forwarded-host", b"host"}
    out = [(n, v) for n, v in headers if n.lower() not in replaced]
    addr = client[0] if client else None
    xff = b", ".join(v for n, v in headers if n.lower() == b"x-forwarded-for")
    if addr:
        xff = xff + b", " + addr.encode() if xff else addr.encode()
    out = [(n, v) for n, v in out if n.lower() != b"x-forwarded-for"]
    if xff:
        out.append((b"x-forwarded-for", xff))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host is not None:
        out.append((b"x-forwarded-host", host))
    previous = [v for n, v in headers if n.lower() == b"forwarded"]
    out = [(n, v) for n, v in out if n.lower() != b"forwarded"]
    element = _forwarded_element(addr, scheme, host)
    out.append((b"forwarded", b", ".join([*previous, element])))
    return out


def _forwarded_element(addr: str | None, scheme: str, host: bytes | None) -> bytes:
    """One RFC 7239 element: ``for=...;proto=...;host=...`` with quoting where needed."""
    parts = [b"for=" + (_node(addr) if addr else b"unknown"), b"proto=" + scheme.encode()]
    if host is not None:
        parts.append(b"host=" + _quoted(host))
    return b";".join(parts)


def _node(addr: str) -> bytes:
    # RFC 7239 §6: an IPv6 address is bracketed and, containing ':', must be quoted.
    return b'"[' + addr.encode() + b']"' if ":" in addr else addr.encode()


def _quoted(value: bytes) -> bytes:
    # host:port contains ':', which is not a token character (RFC 7239 §4), so quote it.
    escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + escaped + b'"'


def _first(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None

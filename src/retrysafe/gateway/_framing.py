"""How a request's body is delimited, and which framings the gateway refuses. No I/O.

Request smuggling lives in the gap between two parsers that frame one message differently.
The gateway's server (uvicorn's h11) accepts a request with both ``Content-Length`` and
``Transfer-Encoding: chunked`` and frames it by the chunks; an upstream, or the forwarder
if it kept the client's ``Content-Length``, may frame it by the length. RFC 9112 §6.3 lets a
server reject such a message and forbids a proxy to forward both, so the gateway refuses it,
before anything is claimed or forwarded, along with every other framing two parsers could
read differently. What it does forward carries framing of its own making (see ``forward``).

The checks do not rely on the server having done them: under another ASGI server (httptools)
the same requests are refused here.
"""

from __future__ import annotations

from collections.abc import Sequence

RawHeaders = Sequence[tuple[bytes, bytes]]


class FramingRefused(ValueError):
    """The request's framing is ambiguous or unsupported; the message says why."""


def declared_length(http_version: str, headers: RawHeaders) -> int | None:
    """The request's ``Content-Length`` (None: chunked or no body declared).

    Raises :class:`FramingRefused` when the framing could be read two ways.
    """
    codings = _values(headers, b"transfer-encoding")
    lengths = _values(headers, b"content-length")
    if codings and lengths:
        raise FramingRefused(
            "the request has both Content-Length and Transfer-Encoding, which upstreams read "
            "differently (request smuggling, RFC 9112 §6.3); send one of them"
        )
    if codings:
        if http_version == "1.0":
            raise FramingRefused(
                "Transfer-Encoding in an HTTP/1.0 request is faulty framing (RFC 9112 §6.1); "
                "send Content-Length, or use HTTP/1.1"
            )
        if [c.lower() for c in codings] != [b"chunked"]:
            shown = ", ".join(c.decode("latin-1") for c in codings)
            raise FramingRefused(
                f"Transfer-Encoding {shown!r} is not supported: only 'chunked' alone is"
            )
        return None
    if not lengths:
        return None
    if len(set(lengths)) != 1 or not lengths[0].isdigit() or not lengths[0].isascii():
        shown = ", ".join(v.decode("latin-1") for v in lengths)
        raise FramingRefused(
            f"Content-Length {shown!r} is not one decimal number; send a single length"
        )
    return int(lengths[0])


def _values(headers: RawHeaders, name: bytes) -> list[bytes]:
    """Every comma-separated element of every ``name`` field, stripped."""
    return [
        element.strip()
        for field, value in headers
        if field.lower() == name
        for element in value.split(b",")
    ]

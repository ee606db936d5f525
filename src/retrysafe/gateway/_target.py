"""Which route a request target falls under, and whether it may be forwarded at all. No I/O.

The gateway chooses a route's policy by path, then forwards the request target to the upstream
byte for byte (the forwarder hands httpcore the exact bytes: httpx's URL parser would resolve
dot segments and re-encode some characters after the route was chosen). What is left is that
upstreams read one path differently: nginx merges ``//``, servlet containers drop ``;params``,
IIS reads ``\\`` as ``/``, frameworks that decode before routing read ``%2F`` as ``/``, some
match case-insensitively. A route's policy must hold however the upstream reads the path, so:

- route prefixes match ASCII case-insensitively, on whole segments (``/pay`` covers ``/PAY/x``,
  not ``/payments``);
- a path is read every way an upstream might (escapes decoded or not, ``\\`` as ``/`` or not,
  ``;params`` dropped or not, ``//`` merged or not); if the readings fall under different
  routes, the request is refused: the gateway cannot tell which policy the upstream will
  execute under. Readings that agree are forwarded unchanged (``/files/a%2Fb`` under a
  ``/files`` route is fine);
- a dot segment (``.``, ``..``, ``%2e%2e``, ``..;``) in any reading is refused outright: an
  upstream may resolve it to a path under another route;
- only origin-form targets (``/path?query``) are forwarded: not absolute-form
  (``http://host/path``, this is a reverse proxy), not ``*``, never a fragment, and only
  printable ASCII (the bytes HTTP/1.1 allows in a request target).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PARAMS = re.compile(rb";[^/]*")
_SLASHES = re.compile(rb"//+")
_NOT_PRINTABLE = re.compile(rb"[^\x21-\x7e]")
_AMBIGUOUS = re.compile(rb"[%\\;]|//")  # a path without these has one reading
DOT_SEGMENTS = frozenset({b".", b".."})


class PathRefused(ValueError):
    """The request target cannot be forwarded safely; the message says why and what to send."""


@dataclass(frozen=True, slots=True)
class Prefix:
    """A route's path prefix, in the two forms a reading is compared with (lowercased)."""

    wire: bytes  # as it appears in a request target: escapes kept
    decoded: bytes  # escapes decoded

    @classmethod
    def of(cls, path: str) -> Prefix:
        wire = quote(path, safe=_PRINTABLE).encode("ascii").rstrip(b"/").lower()
        return cls(wire, unquote_to_bytes(wire).lower())

    def covers(self, reading: bytes, decoded: bool) -> bool:
        prefix = self.decoded if decoded else self.wire
        return not prefix or reading == prefix or reading.startswith(prefix + b"/")


def wire_path(scope: MutableMapping[str, Any]) -> bytes:
    """The path of the request target as the client sent it (before ``?``)."""
    raw = scope.get("raw_path")
    return raw if raw else str(scope["path"]).encode("utf-8")


def readings(path: bytes) -> Iterator[tuple[bytes, bool]]:
    """Every way an upstream may read ``path``: ``(reading, escapes decoded)``, lowercased."""
    path = path.lower()
    if not _AMBIGUOUS.search(path):
        yield path, False
        return
    seen: set[tuple[bytes, bool]] = set()
    for decode in (False, True):
        decoded = unquote_to_bytes(path).lower() if decode else path
        for backslash in (False, True):
            slashed = decoded.replace(b"\\", b"/") if backslash else decoded
            for params in (False, True):
                bare = _PARAMS.sub(b"", slashed) if params else slashed
                for merge in (False, True):
                    reading = (_SLASHES.sub(b"/", bare) if merge else bare, decode)
                    if reading not in seen:
                        seen.add(reading)
                        yield reading


def choose(path: bytes, query: bytes, prefixes: Sequence[Prefix]) -> int | None:
    """The index of the route (longest prefix first) ``path`` falls under, None for the
    default policy; :class:`PathRefused` when the target must not be forwarded."""
    if not path.startswith(b"/"):
        raise PathRefused(
            f"request target {_show(path)} is not in origin-form: this gateway is a reverse "
            "proxy and forwards paths to its upstream only; send the path, e.g. 'POST /pay'"
        )
    if b"#" in path or b"#" in query:
        raise PathRefused(f"request target {_show(path)} carries a fragment ('#'); drop it")
    if _NOT_PRINTABLE.search(path) or _NOT_PRINTABLE.search(query):
        raise PathRefused("request target has bytes outside printable ASCII; percent-encode them")
    lowered = path.lower()
    if not _AMBIGUOUS.search(lowered):  # the common case, kept cheap: one reading
        _no_dot_segments(lowered, path)
        return _route(lowered, False, prefixes)
    chosen: dict[int | None, bytes] = {}
    for reading, decoded in readings(path):
        _no_dot_segments(reading, path)
        chosen.setdefault(_route(reading, decoded, prefixes), reading)
    if len(chosen) > 1:
        spelled = " or ".join(_show(r) for r in chosen.values())
        raise PathRefused(
            f"path {_show(path)} falls under different routes depending on how the upstream "
            f"reads it ({spelled}); send it without '%2F', '%5C', '\\', ';' or '//' in the "
            "part that decides the route"
        )
    return next(iter(chosen))


def _route(reading: bytes, decoded: bool, prefixes: Sequence[Prefix]) -> int | None:
    for index, prefix in enumerate(prefixes):
        if prefix.covers(reading, decoded):
            return index
    return None


def _no_dot_segments(reading: bytes, path: bytes) -> None:
    if b"." in reading and any(s in DOT_SEGMENTS for s in reading.split(b"/")):
        raise PathRefused(
            f"path {_show(path)} has a dot segment ('.' or '..', also when percent-encoded "
            "or followed by ';'); upstreams may resolve it to another path: send the "
            "resolved path"
        )


def _show(path: bytes) -> str:
    text = path.decode("latin-1")
    return repr(text if len(text) <= 200 else text[:200] + "…")

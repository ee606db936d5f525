"""Request and call fingerprints (SPEC rule 6).

A fingerprint is the SHA-256 of what makes two requests "the same request": method, path,
query (parameters sorted, so their order does not matter) and body. A key reused with a
different fingerprint is a client bug answered with 422 (SPEC rule 9).

Two body modes:

- ``bytes`` (default): the body exactly as sent.
- ``json``: a JSON body is canonicalized with RFC 8785 (JCS) first, so key order and
  whitespace do not matter. A body that is not JSON, or that RFC 8785 cannot represent
  (NaN, integers beyond 2**53), falls back to its bytes under a different domain tag, so the
  application still sees it and answers with its own validation error.

Anything else can be plugged in as a :data:`Fingerprinter`.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple, overload
from urllib.parse import parse_qsl

import rfc8785


class HeaderView(Sequence[tuple[str, str]]):
    """Request headers as a server adapter holds them, read as ``(lowercase name, value)``
    pairs. A request has only a few of its headers looked at (the key, Content-Length, the
    default scope's ``Authorization``): :meth:`first` and :meth:`lines` find one without
    decoding or listing the others, and the full list is built only if something iterates."""

    __slots__ = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _VIEWS.add(cls)

    @abc.abstractmethod
    def first(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), or None."""

    @abc.abstractmethod
    def lines(self, name: str) -> list[str]:
        """The value of every line of header ``name`` (lowercase), in order."""

    @abc.abstractmethod
    def _all(self) -> list[tuple[str, str]]:
        """Every line as a ``(lowercase name, value)`` pair, in order (built once)."""

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return self._all()[index]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._all())


# Every HeaderView class, for view_of(): isinstance() against a subclass of an ABC such as
# Sequence goes through ABCMeta.__instancecheck__, ten times the cost of this set lookup.
_VIEWS: set[type] = set()


def view_of(headers: Sequence[tuple[str, str]]) -> HeaderView | None:
    """``headers`` if it is a :class:`HeaderView` (the adapters' headers), else None."""
    return headers if type(headers) in _VIEWS else None  # type: ignore[return-value]


class RawHeaders(HeaderView):
    """Request headers as an ASGI server hands them over (bytes pairs)."""

    __slots__ = ("_decoded", "_names", "raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._decoded: list[tuple[str, str]] | None = None
        self._names: list[bytes] | None = None

    def names(self) -> list[bytes]:
        """Every line's name, lowercased, in order (ASGI names are lowercase, but be lenient).

        Computed once per request: each lookup (the key headers, Content-Length, the scope's
        header) is then a search of this list in C instead of a loop in Python.
        """
        names = self._names
        if names is None:
            names = self._names = [k.lower() for k, _ in self.raw]
        return names

    def first(self, name: str) -> str | None:
        wanted = name.encode("latin-1")
        names = self.names()
        if wanted in names:
            return self.raw[names.index(wanted)][1].decode("latin-1")
        return None

    def lines(self, name: str) -> list[str]:
        wanted = name.encode("latin-1")
        names = self.names()
        lines = names.count(wanted)  # searched in C, as is index() below
        if not lines:
            return []
        if lines == 1:
            return [self.raw[names.index(wanted)][1].decode("latin-1")]
        pairs = zip(names, self.raw, strict=True)
        return [v.decode("latin-1") for n, (_, v) in pairs if n == wanted]

    def _all(self) -> list[tuple[str, str]]:
        if self._decoded is None:
            self._decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]
        return self._decoded

    def __len__(self) -> int:
        return len(self.raw)


class RequestFacts(NamedTuple):  # built on every keyed request: a tuple costs half a dataclass
    """What the server layer knows about a request once its body has been read.

    ``headers`` are ``(name, value)`` pairs; the server adapters give lowercase names.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        headers = self.headers
        view = view_of(headers)
        if view is not None:
            return view.first(lname)
        for k, v in headers:
            if k == lname or k.lower() == lname:
                return v
        return None


Fingerprinter = Callable[[RequestFacts], str]
BodyMode = Literal["bytes", "json"]


def _framed(parts: Iterable[bytes]) -> bytes:
    # Each part length-prefixed, so no two different part lists frame to the same bytes.
    return b"".join([b for part in parts for b in (len(part).to_bytes(8, "big"), part)])


def _digest(parts: Iterable[bytes]) -> str:
    return hashlib.sha256(_framed(parts)).hexdigest()


@functools.lru_cache(maxsize=256)
def _request_prefix(method: str, path: str, query: str, tag: bytes) -> bytes:
    """The framed method, path, sorted query and body tag of a request fingerprint.

    Requests repeat a few of these (one per endpoint), so each is framed once: what is left
    per request is the body's frame and the hash. The same bytes as framing all five parts.
    """
    return _framed((method.upper().encode(), path.encode(), _sorted_query(query), tag))


def _sorted_query(query: str) -> bytes:
    if not query:  # the common case, and json.dumps([]) is b"[]"
        return b"[]"
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return json.dumps(pairs, ensure_ascii=False).encode("utf-8")


def canonical_json(value: object) -> bytes:
    """RFC 8785 canonical bytes of ``value``; raises ValueError when it has no JCS form."""
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    # RecursionError: nesting deeper than the interpreter's stack (a hostile body can be 10 MiB
    # of "["); it has no canonical form we can compute, so it is refused like NaN.
    except (rfc8785.CanonicalizationError, TypeError, RecursionError) as exc:
        raise ValueError(f"value cannot be canonicalized as RFC 8785 JSON: {exc}") from exc


def _json_body(body: bytes) -> tuple[bytes, bytes]:
    if not body:
        return b"empty", b""
    try:
        return b"jcs", canonical_json(json.loads(body))
    # ValueError includes json.JSONDecodeError and UnicodeDecodeError; RecursionError is
    # json.loads on nesting deeper than the stack. Neither may escape: SPEC 6 falls back to bytes.
    except (ValueError, RecursionError):
        return b"raw", body


def request_fingerprint(facts: RequestFacts, mode: BodyMode = "bytes") -> str:
    """Fingerprint of a request in the given body mode (hex SHA-256)."""
    if mode == "json":
        tag, body = _json_body(facts.body)
    else:
        tag, body = b"raw", facts.body
    digest = hashlib.sha256(
        _request_prefix(facts.method, facts.path, facts.query, tag) + len(body).to_bytes(8, "big")
    )
    digest.update(body)  # not concatenated: the body may be megabytes
    return digest.hexdigest()


def bytes_fingerprint(facts: RequestFacts) -> str:
    """The default :data:`Fingerprinter`: the body's exact bytes count."""
    return request_fingerprint(facts, "bytes")


def json_fingerprint(facts: RequestFacts) -> str:
    """A :data:`Fingerprinter` that canonicalizes JSON bodies with RFC 8785."""
    return request_fingerprint(facts, "json")


def call_fingerprint(name: str, arguments: object) -> str:
    """Fingerprint of a function or tool call: its qualified name and canonical arguments."""
    return _digest((b"call", name.encode(), canonical_json(arguments)))

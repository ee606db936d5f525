"""Request and call fingerprints (SPEC rule 6).

A fingerprint is the SHA-256 of what makes two requests "the same request": method, path,
query and body, each as the application can tell them apart. A key reused with a different
fingerprint is a client bug answered with 422 (SPEC rule 9). Two requests the application
could answer differently must never share a fingerprint (one would be answered with the
other's stored response), while a retry of a request, sent again as it was, must keep it:

- the path as the client sent it, percent-escapes intact (``/a%2Fb`` is not ``/a/b``: the
  application or an upstream behind the gateway may route them apart);
- the query as the application reads it: its ``name=value`` pairs, escapes decoded to the
  exact bytes they stand for (an invalid escape stays as written), sorted by name only, so
  repeated names keep their order (``a=1&a=2`` is not ``a=2&a=1``) while the order of
  different names does not count.

Two body modes:

- ``bytes`` (default): the body exactly as sent.
- ``json``: a JSON body is canonicalized with RFC 8785 (JCS) first, so key order and
  whitespace do not matter. A body that is not JSON, or that RFC 8785 cannot represent
  (NaN, integers beyond 2**53), or that repeats a member name (parsers disagree on which
  one wins), or nests deeper than :data:`MAX_JSON_DEPTH`, falls back to its bytes under a
  different domain tag, so the application still sees it and answers with its own
  validation error.

Anything else can be plugged in as a :data:`Fingerprinter`.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Literal, NamedTuple, cast, overload
from urllib.parse import quote, unquote_to_bytes

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

    ``path`` is the path as the client sent it, percent-escapes intact (ASGI ``raw_path``,
    WSGI ``REQUEST_URI``; :func:`quoted_path` where the server gives only the decoded path).
    ``query`` is the query string as sent (latin-1 decoded). ``headers`` are ``(name, value)``
    pairs; the server adapters give lowercase names.
    ``user`` is the authenticated user a middleware running before the idempotency layer
    set (ASGI ``scope["user"]``, WSGI ``REMOTE_USER``), read by ``user_scope``.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    user: str | None = None

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


# Fingerprints of bodies larger than these take more than about a millisecond to compute, so
# the ASGI adapter computes them on a worker thread rather than stall its event loop
# (Policy.inline_fingerprint_limit picks one). SHA-256 hashes hundreds of MB/s; RFC 8785
# canonicalization is pure Python and manages a few MB/s, and a custom fingerprinter's cost is
# unknown, so it is treated as the costly kind.
INLINE_BYTES_LIMIT = 256 * 1024
INLINE_JSON_LIMIT = 4 * 1024

# JSON nested deeper than this is fingerprinted by its bytes. json.loads recurses, so without
# a bound whether a deep document parses would depend on how deep the caller's stack already
# is (the event loop's thread or a worker's): one request could fingerprint two ways.
MAX_JSON_DEPTH = 128

# Characters quote() leaves alone in a path: RFC 3986 pchar and "/", never "%" (an escape of
# its own must stay distinct from an escape the client sent).
_PATH_SAFE = "/:@!$&'()*+,;=~"


def target_path(target: str) -> str:
    """The path of a request target as sent, percent-escapes intact: the query is cut off, and
    an absolute-form target (``http://host/p``, RFC 9112 section 3.2.2) loses its scheme and
    authority, so it is the same path as the origin form ``/p``."""
    if not target.startswith("/"):
        _, scheme_sep, rest = target.partition("://")
        if scheme_sep:
            target = "/" + rest.partition("/")[2]
    return target.partition("?")[0]


def quoted_path(path: str) -> str:
    """``path`` (decoded, as a server that keeps no raw path gives it) percent-encoded again.

    Distinct decoded paths stay distinct. A server that decoded ``%2F`` already made
    ``/a%2Fb`` and ``/a/b`` one path, for the application too, so nothing is lost here.
    """
    return quote(path, safe=_PATH_SAFE, errors="surrogatepass")


def _framed(parts: Iterable[bytes]) -> bytes:
    # Each part length-prefixed, so no two different part lists frame to the same bytes.
    return b"".join([b for part in parts for b in (len(part).to_bytes(8, "big"), part)])


def _digest(parts: Iterable[bytes]) -> str:
    return hashlib.sha256(_framed(parts)).hexdigest()


@functools.lru_cache(maxsize=256)
def _request_prefix(method: str, path: str, query: str, tag: bytes) -> bytes:
    """The framed method, path, query pairs and body tag of a request fingerprint.

    Requests repeat a few of these (one per endpoint), so each is framed once: what is left
    per request is the body's frame and the hash. The same bytes as framing all five parts.
    """
    # The method exactly as sent: method names are case-sensitive (RFC 9110 §9.1), and an app
    # may route ``post`` apart from ``POST`` (Starlette answers it 405), so a ``post`` retry
    # must not be answered with the ``POST``'s stored result.
    return _framed((method.encode(), path.encode(), _query_pairs(query), tag))


def _query_pairs(query: str) -> bytes:
    """The query's ``(name, value)`` pairs as an application reads them, framed.

    Each name and value is unescaped to bytes (``+`` is a space, ``%2B`` a plus sign; an
    invalid escape stays as written, where a decode to text would make every one U+FFFD) and
    the pairs are sorted by name alone: a stable sort keeps the values of a repeated name in
    the order sent, which applications see (``getlist``, ``multi_items``).
    """
    if not query:  # the common case
        return b""
    pairs = []
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((_unescaped(name), _unescaped(value)))
    pairs.sort(key=itemgetter(0))
    return _framed([part for pair in pairs for part in pair])


def _unescaped(text: str) -> bytes:
    # unquote_to_bytes encodes text as UTF-8 first: one-to-one, so distinct stays distinct.
    return unquote_to_bytes(text.replace("+", " ")) if "%" in text or "+" in text else text.encode()


def canonical_json(value: object) -> bytes:
    """RFC 8785 canonical bytes of ``value``; raises ValueError when it has no JCS form."""
    try:
        return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]
    # RecursionError: nesting deeper than the interpreter's stack (a hostile body can be 10 MiB
    # of "["); it has no canonical form we can compute, so it is refused like NaN.
    except (rfc8785.CanonicalizationError, TypeError, RecursionError) as exc:
        raise ValueError(f"value cannot be canonicalized as RFC 8785 JSON: {exc}") from exc


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's members; a name given twice raises (json.loads keeps the last one, other
    parsers the first, so the application may read another value than the one canonicalized)."""
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("a JSON object repeats a member name")
    return members


def _within_depth(doc: object, limit: int) -> bool:
    """Whether ``doc`` nests arrays and objects at most ``limit`` levels deep (``[]`` is one
    level, a scalar none); walked level by level, without recursion."""
    level = [doc] if type(doc) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return False
        inner: list[object] = []
        for value in level:
            children = value.values() if isinstance(value, dict) else cast(list[object], value)
            inner.extend(v for v in children if type(v) in (dict, list))
        level = inner
    return True


def _json_body(body: bytes) -> tuple[bytes, bytes]:
    if not body:
        return b"empty", b""
    try:
        doc = json.loads(body, object_pairs_hook=_unique_members)
        if _within_depth(doc, MAX_JSON_DEPTH):
            return b"jcs", canonical_json(doc)
    # ValueError includes json.JSONDecodeError and UnicodeDecodeError; RecursionError is
    # json.loads on nesting deeper than the stack. Neither may escape: SPEC 6 falls back to bytes.
    except (ValueError, RecursionError):
        pass
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

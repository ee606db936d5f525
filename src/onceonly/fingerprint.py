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

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

import rfc8785


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the server layer knows about a request once its body has been read."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


Fingerprinter = Callable[[RequestFacts], str]
BodyMode = Literal["bytes", "json"]


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


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
    return _digest(
        (facts.method.upper().encode(), facts.path.encode(), _sorted_query(facts.query), tag, body)
    )


def bytes_fingerprint(facts: RequestFacts) -> str:
    """The default :data:`Fingerprinter`: the body's exact bytes count."""
    return request_fingerprint(facts, "bytes")


def json_fingerprint(facts: RequestFacts) -> str:
    """A :data:`Fingerprinter` that canonicalizes JSON bodies with RFC 8785."""
    return request_fingerprint(facts, "json")


def call_fingerprint(name: str, arguments: object) -> str:
    """Fingerprint of a function or tool call: its qualified name and canonical arguments."""
    return _digest((b"call", name.encode(), canonical_json(arguments)))

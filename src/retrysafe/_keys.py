"""Idempotency-Key values: parse, validate, mint and derive.

The header is defined by draft-ietf-httpapi-idempotency-key-header (-06, section 2) as an
RFC 8941 Structured Field *String*: ``Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"``.
Many clients send the bare token instead, so both forms are accepted and mean the same key
(SPEC rule 2). After unquoting, a key is 1-255 characters of visible ASCII, compared
case-sensitively (SPEC rule 3).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence

from retrysafe.errors import InvalidKey

MAX_KEY_LENGTH = 255
_VISIBLE = frozenset(range(0x21, 0x7F))
# The RFC 9562 (section 4) string form only: uuid.UUID() also takes braces, "urn:uuid:", no or
# misplaced hyphens, which would let one UUID travel as several different keys.
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def new_key() -> str:
    """A fresh key for one logical operation: a random UUIDv4 (RFC 9562, section 5.4)."""
    return str(uuid.uuid4())


def derive_key(parent: str, *parts: str) -> str:
    """A key derived deterministically from ``parent`` and ``parts``.

    Used for downstream calls made on behalf of a keyed operation: the same parent and parts
    always give the same key, so a re-run after a crash re-sends the same key downstream.
    """
    digest = hashlib.sha256()
    for piece in (parent, *parts):
        data = piece.encode("utf-8")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()


def parse_key(
    values: Sequence[str],
    *,
    min_length: int = 1,
    max_length: int = MAX_KEY_LENGTH,
    uuid_only: bool = False,
) -> str | None:
    """The key carried by the header lines ``values`` (all lines of one header name).

    Returns ``None`` when the header is absent. Raises :class:`InvalidKey` when it is present but
    malformed: never treat a bad key as "no key" (SPEC rule 3), or a retry would run twice.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKey("the Idempotency-Key header appears more than once; send exactly one")
    raw = values[0].strip(" \t")
    if raw.startswith('"'):
        key = _unquote(raw)
    else:
        if "," in raw:
            raise InvalidKey(
                "the Idempotency-Key header holds a comma-separated list; send a single key "
                '(quote it as a Structured Field String, "...", if the key itself has a comma)'
            )
        key = raw
    check_key(key, min_length=min_length, max_length=max_length, uuid_only=uuid_only)
    return key


def check_key(
    key: str, *, min_length: int = 1, max_length: int = MAX_KEY_LENGTH, uuid_only: bool = False
) -> None:
    """Raise :class:`InvalidKey` unless ``key`` is a valid unquoted key."""
    if not key:
        raise InvalidKey("the Idempotency-Key header is empty; send a unique key per operation")
    # Fast path first (str methods run in C): ASCII, no control characters, no space.
    visible = key.isascii() and key.isprintable() and " " not in key
    bad = (
        None if visible else next((i for i, ch in enumerate(key) if ord(ch) not in _VISIBLE), None)
    )
    if bad is not None:
        raise InvalidKey(
            f"the Idempotency-Key holds {_as_sent(key, bad)}; keys are visible ASCII only "
            "(0x21-0x7E), no spaces or control characters"
        )
    if len(key) > max_length:
        raise InvalidKey(
            f"the Idempotency-Key is {len(key)} characters long; the limit is {max_length}"
        )
    if len(key) < min_length:
        raise InvalidKey(
            f"the Idempotency-Key is {len(key)} characters long; at least {min_length} are required"
        )
    if uuid_only and _UUID_TEXT.fullmatch(key) is None:
        raise InvalidKey(
            "this endpoint accepts only UUID idempotency keys (RFC 9562), "
            "e.g. 8e03978e-40d5-43e8-bc93-6894a57f9324"
        )


def _as_sent(key: str, index: int) -> str:
    """The character at ``index`` as the client sent it, escaped when it is not printable.

    Servers decode header bytes as Latin-1 (ASGI, PEP 3333), so "é" sent in UTF-8 arrives as
    "Ã©": when the bytes from ``index`` on decode as one UTF-8 character, that is the one named.
    """
    ch = key[index]
    if 0x80 <= ord(ch) <= 0xFF:
        raw = key[index : index + 4].encode("latin-1", "replace")
        for n in (2, 3, 4):
            try:
                sent = raw[:n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            return (
                f"the character {_shown(sent)} (U+{ord(sent):04X}, UTF-8 bytes {raw[:n].hex(' ')})"
            )
    return f"the character {_shown(ch)} (U+{ord(ch):04X})"


def _shown(ch: str) -> str:
    # repr() leaves printable characters as they are ('é') and escapes the rest ('\x00'),
    # ascii() also escapes printable ones that are not ASCII; invisible ones must not print.
    return repr(ch) if ch.isprintable() and not ch.isspace() else ascii(ch)


def _unquote(raw: str) -> str:
    """Unquote an RFC 8941 sf-string (section 3.3.3); only ``\\"`` and ``\\\\`` are escapes."""
    out: list[str] = []
    i = 1
    while i < len(raw):
        ch = raw[i]
        if ch == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in '"\\':
                raise InvalidKey(
                    'the quoted Idempotency-Key has a bad escape; only \\" and \\\\ are allowed'
                )
            out.append(raw[i + 1])
            i += 2
            continue
        if ch == '"':
            if raw[i + 1 :].strip(" \t"):
                raise InvalidKey(
                    "the Idempotency-Key header has text after the closing quote; "
                    "send a single quoted key"
                )
            return "".join(out)
        out.append(ch)
        i += 1
    raise InvalidKey("the quoted Idempotency-Key has no closing quote")

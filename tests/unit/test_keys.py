"""Idempotency-Key parsing and validation (SPEC rules 1-4, _keys.py)."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe._keys import MAX_KEY_LENGTH, check_key, derive_key, new_key, parse_key
from retrysafe.errors import InvalidKey, RetrySafeError

VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))


def quote(key: str) -> str:
    """``key`` as an RFC 8941 sf-string (section 4.1.6: escape DQUOTE and backslash)."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def refused(values: list[str], **kwargs: object) -> str:
    """The reason :func:`parse_key` gives for refusing ``values`` (fails if it accepts)."""
    with pytest.raises(InvalidKey) as info:
        parse_key(values, **kwargs)  # type: ignore[arg-type]
    reason = info.value.reason
    assert reason == str(info.value)
    assert "Idempotency-Key" in reason or "UUID" in reason  # the client can tell what is wrong
    return reason


# -- absent vs present -------------------------------------------------------------------------


def test_absent_header_is_no_key() -> None:
    assert parse_key([]) is None
    assert parse_key(()) is None


def test_invalid_key_is_a_value_error_under_the_root() -> None:
    assert issubclass(InvalidKey, ValueError)
    assert issubclass(InvalidKey, RetrySafeError)


# -- SPEC rule 3: every malformed form is refused, never treated as "no key" --------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\t", "empty"),
        ('""', "empty"),
        ("x" * 256, "256 characters long; the limit is 255"),
        ('"' + "x" * 256 + '"', "256 characters long"),
        ("ab\x00cd", "U+0000"),
        ("ab\x1fcd", "U+001F"),
        ("ab\x7fcd", "U+007F"),
        ("ab\rcd", "U+000D"),
        ("ab\ncd", "U+000A"),
        ("ab\tcd", "U+0009"),
        ("caf\u00e9", "U+00E9"),
        ("key-\u2603", "U+2603"),
        ("\ud800", "U+D800"),  # a lone surrogate (from a latin-1/surrogateescape decode)
        ('"caf\u00e9"', "U+00E9"),
        ("ab cd", "U+0020"),
        ('"ab cd"', "U+0020"),
        ("a,b", "comma-separated list"),
        ("a, b", "comma-separated list"),
        (",", "comma-separated list"),
        ('"a", "b"', "text after the closing quote"),
        ('"a","b"', "text after the closing quote"),
        ('"abc', "no closing quote"),
        ('"', "no closing quote"),
        ('"abc\\"', "no closing quote"),  # the escaped quote does not close the string
        ('"ab\\c"', "bad escape"),
        ('"abc\\', "bad escape"),
        ('"ab\\n"', "bad escape"),
        ('"abc"def', "text after the closing quote"),
        ('"abc" x', "text after the closing quote"),
        ('"abc";p=1', "text after the closing quote"),  # sf parameters are not accepted
    ],
)
def test_malformed_key_is_refused_with_a_reason(value: str, reason: str) -> None:
    assert reason in refused([value])


def test_two_header_lines_are_refused_even_when_equal() -> None:
    assert "more than once" in refused(["abc", "abc"])
    assert "more than once" in refused(['"abc"', "def"])


def test_max_length_is_inclusive() -> None:
    assert parse_key(["x" * MAX_KEY_LENGTH]) == "x" * MAX_KEY_LENGTH
    assert parse_key([quote("x" * MAX_KEY_LENGTH)]) == "x" * MAX_KEY_LENGTH


def test_length_is_counted_after_unquoting() -> None:
    # 255 characters once unquoted, 427 on the wire: escapes do not count twice.
    key = '"\\x' * 85
    assert len(key) == 255
    assert len(quote(key)) == 427
    assert parse_key([quote(key)]) == key
    assert "256 characters" in refused([quote(key + '"')])


def test_error_message_names_the_offending_character() -> None:
    reason = refused(["abc\x01"])
    assert "'\\x01'" in reason
    assert "0x21-0x7E" in reason


# -- SPEC rule 2: sf-string and bare forms mean the same key -----------------------------------


@pytest.mark.parametrize(
    "key", ["abc", "8e03978e-40d5-43e8-bc93-6894a57f9324", "a", "!#$%&'()*+-./:;<=>?@[]^_`{|}~"]
)
def test_quoted_and_bare_forms_give_the_same_key(key: str) -> None:
    assert parse_key([key]) == key
    assert parse_key([quote(key)]) == key


def test_escapes_unquote() -> None:
    assert parse_key(['"a\\"b"']) == 'a"b'
    assert parse_key(['"a\\\\b"']) == "a\\b"
    assert parse_key(['"\\\\\\""']) == '\\"'


def test_a_quoted_key_may_hold_a_comma() -> None:
    # Inside an sf-string a comma is just a character; only the bare form forbids it.
    assert parse_key(['"a,b"']) == "a,b"


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_key(["  abc\t"]) == "abc"
    assert parse_key([' "abc"  ']) == "abc"


def test_keys_are_case_sensitive() -> None:
    assert parse_key(["ABC"]) != parse_key(["abc"])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=VISIBLE.replace(",", ""), min_size=1, max_size=MAX_KEY_LENGTH))
def test_any_visible_key_round_trips_bare_and_quoted(key: str) -> None:
    quoted = parse_key([quote(key)])
    assert quoted == key
    if not key.startswith('"'):
        # A bare value that starts with DQUOTE is an sf-string by definition, so it is
        # only expressible quoted; every other visible key also round-trips bare.
        assert parse_key([key]) == key


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_parse_key_never_raises_anything_but_invalid_key(value: str) -> None:
    try:
        key = parse_key([value])
    except InvalidKey:
        return
    assert key is not None
    assert 1 <= len(key) <= MAX_KEY_LENGTH
    assert all(0x21 <= ord(ch) <= 0x7E for ch in key)


# -- configurable minimum length and UUID-only mode ---------------------------------------------


def test_min_length() -> None:
    assert parse_key(["abcdefgh"], min_length=8) == "abcdefgh"
    assert "at least 8" in refused(["abcdefg"], min_length=8)
    assert "at least 8" in refused(['"abcdefg"'], min_length=8)


def test_max_length_can_be_lowered() -> None:
    assert parse_key(["x" * 40], max_length=40) == "x" * 40
    assert "limit is 40" in refused(["x" * 41], max_length=40)


def test_uuid_only_accepts_uuids_in_both_forms() -> None:
    key = "8e03978e-40d5-43e8-bc93-6894a57f9324"
    assert parse_key([key], uuid_only=True) == key
    assert parse_key([quote(key)], uuid_only=True) == key
    assert parse_key([key.upper()], uuid_only=True) == key.upper()


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "8e03978e-40d5-43e8-bc93-6894a57f932",  # one digit short
        "8e03978e-40d5-43e8-bc93-6894a57f9324a",
        "8e03978e-40d5-43e8-bc93-6894a57f932g",
        # Forms uuid.UUID() parses but that are not the RFC 9562 string representation: they
        # would let one UUID be sent as several different keys.
        "urn:uuid:8e03978e-40d5-43e8-bc93-6894a57f9324",
        "{8e03978e-40d5-43e8-bc93-6894a57f9324}",
        "8e03978e40d543e8bc936894a57f9324",
        "----8e03978e40d543e8bc936894a57f9324",
    ],
)
def test_uuid_only_refuses_anything_else(value: str) -> None:
    assert "UUID" in refused([value], uuid_only=True)


def test_check_key_validates_unquoted_keys() -> None:
    check_key("abc")
    check_key('"abc"')  # already unquoted: the quotes are part of the key
    with pytest.raises(InvalidKey, match="empty"):
        check_key("")
    with pytest.raises(InvalidKey, match="U\\+0020"):
        check_key("a b")
    with pytest.raises(InvalidKey, match="at least 3"):
        check_key("ab", min_length=3)


# -- minting and deriving (SPEC rule 4) ---------------------------------------------------------


def test_new_key_is_a_fresh_uuid4_that_parses_in_uuid_only_mode() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert uuid.UUID(key).version == 4
        assert parse_key([key], uuid_only=True) == key


def test_derive_key_is_deterministic_and_a_valid_key() -> None:
    key = derive_key("parent", "step-1", "charge")
    assert key == derive_key("parent", "step-1", "charge")
    assert re.fullmatch("[0-9a-f]{64}", key)
    assert parse_key([key]) == key


def test_derive_key_separates_its_parts() -> None:
    # Length-prefixed parts: moving a boundary or a character changes the key.
    assert derive_key("ab", "c") != derive_key("a", "bc")
    assert derive_key("a", "b", "") != derive_key("a", "b")
    assert derive_key("p", "1") != derive_key("p", "2")
    assert derive_key("p1", "x") != derive_key("p2", "x")
    assert derive_key("p") != derive_key("p", "")

"""Request and call fingerprints (SPEC rule 6, _fingerprint.py)."""

from __future__ import annotations

import json
import random
import re
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrysafe._fingerprint import (
    MAX_JSON_DEPTH,
    RequestFacts,
    bytes_fingerprint,
    call_fingerprint,
    canonical_json,
    json_fingerprint,
    quoted_path,
    request_fingerprint,
    target_path,
)
from retrysafe._policy import Policy


def facts(
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/charges",
    query: str = "",
    headers: tuple[tuple[str, str], ...] = (),
) -> RequestFacts:
    return RequestFacts(method, path, query, headers, body)


def both(f: RequestFacts) -> tuple[str, str]:
    return bytes_fingerprint(f), json_fingerprint(f)


def test_fingerprint_is_hex_sha256_and_deterministic() -> None:
    f = facts(b'{"a":1}', query="x=1")
    for fp in both(f):
        assert re.fullmatch("[0-9a-f]{64}", fp)
    assert both(f) == both(facts(b'{"a":1}', query="x=1"))
    assert request_fingerprint(f) == bytes_fingerprint(f)
    assert request_fingerprint(f, "json") == json_fingerprint(f)


# -- method, path, query ----------------------------------------------------------------------


def test_method_matters_and_so_does_its_case() -> None:
    assert both(facts(method="POST")) != both(facts(method="PATCH"))
    # RFC 9110 §9.1: methods are case-sensitive; ``post`` is another request than ``POST``.
    assert both(facts(method="post")) != both(facts(method="POST"))


def test_path_matters() -> None:
    assert both(facts(path="/a")) != both(facts(path="/b"))
    assert both(facts(path="/a")) != both(facts(path="/a/"))
    assert both(facts(path="/A")) != both(facts(path="/a"))


def test_the_order_of_different_query_names_does_not_matter() -> None:
    assert both(facts(query="a=1&b=2")) == both(facts(query="b=2&a=1"))
    assert both(facts(query="a=1&a=2&b=3")) == both(facts(query="b=3&a=1&a=2"))


def test_the_order_of_a_repeated_query_name_matters() -> None:
    # Applications read repeated names as a list (getlist, multi_items): its order is data.
    assert both(facts(query="a=1&a=2")) != both(facts(query="a=2&a=1"))
    assert both(facts(query="a=1&a=2&b=3")) != both(facts(query="b=3&a=2&a=1"))


def test_query_escapes_count_as_the_bytes_they_stand_for() -> None:
    # Invalid UTF-8 escapes are distinct bytes (a text decode made each one U+FFFD).
    assert both(facts(query="x=%ff")) != both(facts(query="x=%fe"))
    assert both(facts(query="x=%ff")) != both(facts(query="x=%EF%BF%BD"))
    # An escape is the byte it encodes; "+" is a space and "%2B" a plus sign.
    assert both(facts(query="x=%41")) == both(facts(query="x=A"))
    assert both(facts(query="x=a+b")) == both(facts(query="x=a%20b"))
    assert both(facts(query="x=a+b")) != both(facts(query="x=a%2Bb"))
    # An invalid escape stays as written, and differs from what it would decode to.
    assert both(facts(query="x=%zz")) != both(facts(query="x=zz"))
    assert both(facts(query="x=%")) != both(facts(query="x="))
    # "a=" and "a=b" differ; "&" separates, "=" splits once.
    assert both(facts(query="a=")) != both(facts(query="a=b"))
    assert both(facts(query="a=b=c")) != both(facts(query="a=b&c"))
    assert both(facts(query="a%3Db=c")) != both(facts(query="a=b%3Dc"))


query_pairs = st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=6)


def by_name(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What an application reads: each name's values in the order sent (a stable sort)."""
    return sorted(pairs, key=lambda pair: pair[0].encode())


@settings(max_examples=200, deadline=None)
@given(query_pairs, query_pairs, st.randoms(use_true_random=False))
def test_queries_fingerprint_alike_exactly_when_an_application_reads_them_alike(
    one: list[tuple[str, str]], other: list[tuple[str, str]], rng: random.Random
) -> None:
    # The same pairs with different names interleaved otherwise: the same request.
    names = {name: [p for p in one if p[0] == name] for name, _ in one}
    reordered: list[tuple[str, str]] = []
    while any(names.values()):
        name = rng.choice([n for n, left in names.items() if left])
        reordered.append(names[name].pop(0))
    assert both(facts(query=urlencode(one))) == both(facts(query=urlencode(reordered)))
    # Escaped another way (%20 for a space, every byte escaped): still the same.
    assert both(facts(query=urlencode(one))) == both(
        facts(
            query=urlencode(one, quote_via=lambda s, *_: "".join(f"%{b:02X}" for b in s.encode()))
        )
    )
    # Two queries an application reads differently never fingerprint alike.
    same = by_name(one) == by_name(other)
    assert (both(facts(query=urlencode(one))) == both(facts(query=urlencode(other)))) is same


def test_the_path_counts_as_sent() -> None:
    # RequestFacts.path holds the raw path: an escaped slash is not a slash (an upstream may
    # route them apart), whatever a server decodes for its application.
    assert both(facts(path="/items/a%2Fb")) != both(facts(path="/items/a/b"))
    assert quoted_path("/items/a/b") != quoted_path("/items/a%2Fb")
    assert quoted_path("/caf\u00e9 x") == "/caf%C3%A9%20x"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/a%2Fb?x=1", "/a%2Fb"),
        ("/a/b", "/a/b"),
        ("http://host:8080/a%2Fb?x=1", "/a%2Fb"),
        ("https://host", "/"),
        ("*", "*"),
    ],
)
def test_target_path_is_the_path_as_sent(target: str, path: str) -> None:
    assert target_path(target) == path


def test_query_values_and_names_matter() -> None:
    base = both(facts(query="a=1&b=2"))
    assert both(facts(query="a=1&b=3")) != base
    assert both(facts(query="a=1&c=2")) != base
    assert both(facts(query="a=1")) != base
    assert both(facts(query="a=1&b=2&b=2")) != base  # a repeated parameter counts
    assert both(facts(query="")) != both(facts(query="a="))  # a blank value is kept


def test_query_and_body_cannot_be_confused() -> None:
    # Length-prefixed parts: bytes moved between fields give another fingerprint.
    assert both(facts(b"a=1")) != both(facts(query="a=1"))
    assert both(facts(path="/ab")) != both(facts(path="/a", query="b"))


def test_headers_do_not_count() -> None:
    assert both(facts(headers=(("x-trace", "1"),))) == both(facts(headers=(("x-trace", "2"),)))


# -- bytes mode -------------------------------------------------------------------------------


def test_bytes_mode_distinguishes_whitespace_and_key_order() -> None:
    assert bytes_fingerprint(facts(b'{"a":1}')) != bytes_fingerprint(facts(b'{"a": 1}'))
    assert bytes_fingerprint(facts(b'{"a":1,"b":2}')) != bytes_fingerprint(facts(b'{"b":2,"a":1}'))
    assert bytes_fingerprint(facts(b"x")) != bytes_fingerprint(facts(b"x\n"))


def test_body_matters() -> None:
    assert both(facts(b"")) != both(facts(b"x"))
    assert both(facts(b"a")) != both(facts(b"b"))


# -- json mode --------------------------------------------------------------------------------


def test_json_mode_ignores_key_order_and_whitespace() -> None:
    a = json_fingerprint(facts(b'{"amount": 100, "currency": "eur", "meta": {"x": [1, 2]}}'))
    b = json_fingerprint(facts(b'{"meta":{"x":[1,2]},"currency":"eur","amount":100}'))
    c = json_fingerprint(facts(b'\n{ "currency" : "eur" ,\t"amount":100, "meta":{"x":[1,\n2]}}\n'))
    assert a == b == c


def test_json_mode_canonicalizes_number_and_string_spellings() -> None:
    # RFC 8785: numbers are serialized as ECMAScript does, strings with minimal escapes.
    assert json_fingerprint(facts(b'{"n": 1.0}')) == json_fingerprint(facts(b'{"n": 1}'))
    assert json_fingerprint(facts(b'{"n": 1e2}')) == json_fingerprint(facts(b'{"n": 100}'))
    assert json_fingerprint(facts(b'{"s": "\\u0041"}')) == json_fingerprint(facts(b'{"s": "A"}'))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b'{"a": 1}', b'{"a": 2}'),
        (b'{"a": 1}', b'{"a": "1"}'),
        (b'{"a": 1}', b'{"b": 1}'),
        (b'{"a": [1, 2]}', b'{"a": [2, 1]}'),  # array order is data
        (b'{"a": null}', b"{}"),
        (b'{"a": true}', b'{"a": 1}'),
        (b'{"a": "x"}', b'{"a": "X"}'),
        (b"[]", b"{}"),
        (b'""', b""),
    ],
)
def test_json_mode_does_not_ignore_values(one: bytes, other: bytes) -> None:
    assert json_fingerprint(facts(one)) != json_fingerprint(facts(other))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"a": 1',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 9007199254740993}',  # beyond 2**53: no exact RFC 8785 form
        b'{"a": ' + b"9" * 5000 + b"}",  # beyond Python's int-from-string digit limit
        b"\xff\xfe\x00",  # not UTF-8
        b'{"a": "\\ud800"}',  # a lone surrogate
        b"[" * 100_000,  # nesting deeper than the recursion limit, unterminated
        b"[" * 5_000 + b"]" * 5_000,  # ... and terminated
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    ],
)
def test_json_mode_never_raises_and_falls_back_to_bytes(body: bytes) -> None:
    fp = json_fingerprint(facts(body))
    assert re.fullmatch("[0-9a-f]{64}", fp)
    assert fp == json_fingerprint(facts(body))
    # The fallback still tells different bodies apart, byte for byte.
    assert json_fingerprint(facts(body + b" ")) != fp


def test_json_mode_does_not_canonicalize_a_repeated_member_name() -> None:
    # json.loads keeps the last value, other parsers the first: the application may read a=1.
    assert json_fingerprint(facts(b'{"a":1,"a":2}')) != json_fingerprint(facts(b'{"a":2}'))
    assert json_fingerprint(facts(b'{"a":1,"a":2}')) != json_fingerprint(facts(b'{"a": 1,"a":2}'))
    nested = b'{"x":{"a":1,"a":2}}'
    assert json_fingerprint(facts(nested)) != json_fingerprint(facts(b'{"x":{"a":2}}'))


def test_json_mode_depth_bound_is_exact() -> None:
    def nested(depth: int, pad: str = "") -> bytes:
        return ("[" * depth + pad + "]" * depth).encode()

    # At the bound the document is canonicalized (whitespace ignored) ...
    assert json_fingerprint(facts(nested(MAX_JSON_DEPTH))) == json_fingerprint(
        facts(nested(MAX_JSON_DEPTH, " "))
    )
    # ... one level deeper it is fingerprinted by its bytes, whatever the stack depth.
    assert json_fingerprint(facts(nested(MAX_JSON_DEPTH + 1))) != json_fingerprint(
        facts(nested(MAX_JSON_DEPTH + 1, " "))
    )
    deep_objects = b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    assert json_fingerprint(facts(deep_objects)) != json_fingerprint(facts(deep_objects + b" "))


def test_json_mode_fallback_differs_from_the_canonical_form() -> None:
    # '{"a":1}' as canonical JSON and as raw bytes of a non-JSON body must not collide: the
    # domain tag separates them (the body "{"a":1}" canonicalizes to the same bytes).
    canonical = json_fingerprint(facts(b'{"a": 1}'))
    assert canonical == json_fingerprint(facts(b'{"a":1}'))
    assert canonical != bytes_fingerprint(facts(b'{"a":1}'))


def test_json_mode_empty_body_is_not_the_empty_string() -> None:
    assert json_fingerprint(facts(b"")) != json_fingerprint(facts(b'""'))
    assert json_fingerprint(facts(b"")) == json_fingerprint(facts(b""))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


def shuffled(value: object, rng: random.Random) -> object:
    """``value`` with every object's keys in a random order (arrays keep theirs)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@settings(max_examples=150, deadline=None)
@given(json_values, st.randoms(use_true_random=False), st.sampled_from([None, 0, 2, "\t"]))
def test_json_mode_is_invariant_under_reserialization(
    doc: object, rng: random.Random, indent: int | str | None
) -> None:
    original = json.dumps(doc).encode()
    again = json.dumps(shuffled(doc, rng), indent=indent, ensure_ascii=rng.random() < 0.5)
    assert json_fingerprint(facts(original)) == json_fingerprint(facts(again.encode()))


@settings(max_examples=100, deadline=None)
@given(json_values, json_values)
def test_json_mode_tells_different_documents_apart(one: object, other: object) -> None:
    same = canonical_json(one) == canonical_json(other)
    assert (
        json_fingerprint(facts(json.dumps(one).encode()))
        == json_fingerprint(facts(json.dumps(other).encode()))
    ) is same


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_json_mode_never_raises_on_any_bytes(body: bytes) -> None:
    assert len(json_fingerprint(facts(body))) == 64


# -- pluggable ----------------------------------------------------------------------------------


def test_policy_picks_the_body_mode() -> None:
    f = facts(b'{"a": 1}')
    assert Policy().fingerprint_of(f) == bytes_fingerprint(f)
    assert Policy(body_mode="json").fingerprint_of(f) == json_fingerprint(f)


def test_a_custom_fingerprinter_is_used() -> None:
    seen: list[RequestFacts] = []

    def by_tenant(f: RequestFacts) -> str:
        seen.append(f)
        return f"tenant:{f.header('X-Tenant')}"

    policy = Policy(fingerprint=by_tenant, body_mode="json")  # overrides body_mode
    f = facts(b"anything", headers=(("x-tenant", "t1"),))
    assert policy.fingerprint_of(f) == "tenant:t1"
    assert seen == [f]


def test_facts_header_lookup_is_case_insensitive_and_first_wins() -> None:
    f = facts(headers=(("Content-Type", "a"), ("content-type", "b")))
    assert f.header("CONTENT-TYPE") == "a"
    assert f.header("x-missing") is None


# -- call fingerprints (functions and agent tools) ---------------------------------------------


def test_call_fingerprint_ignores_argument_key_order_but_not_values_or_name() -> None:
    fp = call_fingerprint("charge", {"amount": 1, "to": "x"})
    assert fp == call_fingerprint("charge", {"to": "x", "amount": 1})
    assert fp != call_fingerprint("charge", {"amount": 2, "to": "x"})
    assert fp != call_fingerprint("refund", {"amount": 1, "to": "x"})


@pytest.mark.parametrize("value", [float("nan"), 2**60, object(), {1: "int key"}])
def test_canonical_json_refuses_what_rfc8785_cannot_represent(value: object) -> None:
    with pytest.raises(ValueError, match="RFC 8785"):
        canonical_json(value)


def test_canonical_json_refuses_too_deep_values_with_value_error() -> None:
    deep: list[object] = []
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(ValueError, match="RFC 8785"):
        canonical_json(deep)

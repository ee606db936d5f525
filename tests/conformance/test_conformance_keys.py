"""SPEC rules 1-3 and 11, and the method set of section 2: which requests carry which key."""

from __future__ import annotations

import json
import uuid

import pytest

from kit.doors import assert_problem
from retrysafe._policy import Problem

BODY = b'{"amount": 100}'


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('"order-17"', "order-17"),
        ("order-17", '"order-17"'),
        ('"a\\"b\\\\c"', 'a"b\\c'),  # sf-string escapes: \" and \\
        ("  order-17\t", "order-17"),  # optional whitespace around the field value
    ],
)
async def test_rule_02_quoted_and_bare_forms_are_the_same_key(serve, first, second):
    door = serve()
    one = await door.post(first, BODY)
    two = await door.post(second, BODY)
    assert one.status == two.status == 201
    assert not one.replayed
    assert two.replayed
    assert two.body == one.body
    assert door.handler.runs == 1


async def test_rule_03_keys_compare_case_sensitively(serve):
    door = serve()
    lower = await door.post("order-abc", BODY)
    upper = await door.post("ORDER-ABC", BODY)
    assert lower.status == upper.status == 201
    assert not upper.replayed
    assert door.handler.runs == 2


MALFORMED = {
    "empty": b"",
    "blank": b"   ",
    "quoted-empty": b'""',
    "too-long": b"k" * 256,
    "quoted-too-long": b'"' + b"k" * 256 + b'"',
    "inner-space": b"order 17",
    "inner-tab": b"order\t17",
    "control-byte": b"order\x0117",
    "del-byte": b"order\x7f17",
    "non-ascii": "ordér-17".encode(),
    "comma-list": b"order-17, order-18",
    "comma-list-quoted": b'"order-17", "order-18"',
    "unterminated-quote": b'"order-17',
    "text-after-quote": b'"order-17"x',
    "bad-escape": b'"order\\q17"',
    "quoted-control": b'"order\x0117"',
}


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
async def test_rule_03_malformed_key_is_400_problem_and_handler_not_run(serve, value):
    door = serve()
    reply = await door.post(value, BODY)
    assert_problem(reply, Problem.MALFORMED_KEY, 400)
    assert door.handler.runs == 0
    assert door.store.count("claim") == 0  # never treated as "no key", never stored


async def test_rule_03_boundary_lengths_are_accepted(serve):
    door = serve()
    for key in ("k", "k" * 255, '"' + "q" * 255 + '"', "!~#$%&'*+-.^_`|"):
        reply = await door.post(key, BODY)
        assert reply.status == 201, (key, reply.body)
    assert door.handler.runs == 4


async def test_rule_03_two_header_lines_are_400(serve):
    # ASGI sees two lines; a WSGI server joins them with ", " (a list): both are refused.
    door = serve()
    reply = await door.request(
        "POST", headers=[("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-1")], body=BODY
    )
    doc = assert_problem(reply, Problem.MALFORMED_KEY, 400)
    if door.name in ("asgi", "starlette"):
        assert "more than once" in doc["detail"]
    else:
        assert "comma-separated list" in doc["detail"]
    assert door.handler.runs == 0


async def test_rule_03_min_length_is_configurable(serve, policy_for):
    door = serve(policy=policy_for(key_min_length=8))
    short = await door.post("short", BODY)
    assert_problem(short, Problem.MALFORMED_KEY, 400)
    assert "at least 8" in short.json()["detail"]
    assert (await door.post("long-enough", BODY)).status == 201
    assert door.handler.runs == 1


async def test_rule_03_uuid_only_mode(serve, policy_for):
    door = serve(policy=policy_for(uuid_only=True))
    assert_problem(await door.post("order-17", BODY), Problem.MALFORMED_KEY, 400)
    key = str(uuid.uuid4())
    assert (await door.post(key, BODY)).status == 201
    assert (await door.post(f'"{key}"', BODY)).replayed
    assert door.handler.runs == 1


async def test_rule_01_second_accepted_header_name(serve, policy_for):
    door = serve(policy=policy_for(header_names=("Idempotency-Key", "X-Idempotency-Key")))
    first = await door.request("POST", headers=[("X-Idempotency-Key", "k-2")], body=BODY)
    assert first.status == 201
    again = await door.post("k-2", BODY)  # the primary name carries the same key
    assert again.replayed
    assert again.body == first.body
    both = await door.request(
        "POST", headers=[("Idempotency-Key", "k-3"), ("X-Idempotency-Key", "k-3")], body=BODY
    )
    assert_problem(both, Problem.MALFORMED_KEY, 400)
    bad = await door.request("POST", headers=[("X-Idempotency-Key", "a, b")], body=BODY)
    assert_problem(bad, Problem.MALFORMED_KEY, 400)
    assert door.handler.runs == 1


async def test_rule_01_unconfigured_header_name_is_not_a_key(serve):
    door = serve()
    for _ in range(2):
        reply = await door.request("POST", headers=[("X-Idempotency-Key", "k-4")], body=BODY)
        assert reply.status == 201
        assert not reply.replayed
    assert door.handler.runs == 2


async def test_rule_01_key_in_json_body_field(serve, policy_for):
    door = serve(policy=policy_for(body_field="idempotency_key"))
    body = json.dumps({"idempotency_key": "k-5", "amount": 100}).encode()
    first = await door.request("POST", body=body)
    second = await door.request("POST", body=body, chunked=True)
    assert first.status == 201
    assert second.replayed
    assert second.body == first.body
    assert door.handler.runs == 1
    assert door.handler.calls[0].body == body  # the body read for the key is re-fed unchanged
    assert door.handler.calls[0].state_key == "k-5"
    other = json.dumps({"idempotency_key": "k-5", "amount": 999}).encode()
    assert_problem(await door.request("POST", body=other), Problem.MISMATCH, 422)
    bad = json.dumps({"idempotency_key": "k 5"}).encode()
    assert_problem(await door.request("POST", body=bad), Problem.MALFORMED_KEY, 400)
    assert door.handler.runs == 1


async def test_rule_01_body_field_without_key_passes_through_with_body(serve, policy_for):
    door = serve(policy=policy_for(body_field="idempotency_key"))
    body = b'{"amount": 100, "note": "' + b"x" * 300 + b'"}'
    for chunked in (False, True):
        reply = await door.request("POST", body=body, chunked=chunked)
        assert reply.status == 201
        assert not reply.replayed
    assert [call.body for call in door.handler.calls] == [body, body]
    assert door.store.count("claim") == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_rule_02_uncovered_methods_pass_through_even_with_a_key(serve, method):
    door = serve()
    for key in ("k-6", "k-6", "not a valid key"):
        reply = await door.request(method, key=key)
        assert reply.status == 201
        assert not reply.replayed
    assert door.handler.runs == 3
    assert door.handler.calls[0].state_key is None  # nothing claimed, no current key
    assert door.store.count("claim") == 0


async def test_rule_02_covered_method_set_is_configurable(serve, policy_for):
    door = serve(policy=policy_for(methods=frozenset({"put"})))
    assert (await door.request("PUT", key="k-7")).status == 201
    assert (await door.request("PUT", key="k-7")).replayed
    assert not (await door.request("POST", key="k-7")).replayed
    assert door.handler.runs == 2


async def test_rule_11_missing_key_when_required_is_400_and_handler_not_run(serve, policy_for):
    door = serve(policy=policy_for(required=True))
    reply = await door.post(None, BODY)
    doc = assert_problem(reply, Problem.MISSING_KEY, 400)
    assert "Idempotency-Key" in doc["detail"]
    assert door.handler.runs == 0
    assert (await door.request("GET")).status == 201  # safe methods never need a key
    assert door.handler.runs == 1


async def test_rule_11_required_can_depend_on_the_route(serve, policy_for):
    door = serve(policy=policy_for(required=lambda method, path: path.startswith("/payments")))
    assert_problem(await door.request("POST", "/payments"), Problem.MISSING_KEY, 400)
    assert (await door.request("POST", "/things")).status == 201
    assert (await door.request("POST", "/payments", key="k-8")).status == 201
    assert door.handler.runs == 2


async def test_rule_11_missing_key_not_required_runs_every_time_without_a_record(serve):
    door = serve()
    for _ in range(2):
        reply = await door.post(None, BODY)
        assert reply.status == 201
        assert not reply.replayed
    assert door.handler.runs == 2
    assert door.store.count("claim") == 0


async def test_rule_11_key_in_the_body_field_satisfies_required(serve, policy_for):
    door = serve(policy=policy_for(body_field="idempotency_key", required=True))
    body = json.dumps({"idempotency_key": "k-9"}).encode()
    assert (await door.request("POST", body=body)).status == 201
    assert (await door.request("POST", body=body)).replayed
    assert_problem(await door.request("POST", body=b'{"amount": 1}'), Problem.MISSING_KEY, 400)
    assert door.handler.runs == 1

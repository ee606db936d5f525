"""SPEC rules 5-9, 12 and 14: identity, fingerprints, what is stored, replay and expiry."""

from __future__ import annotations

import uuid

import pytest

from kit.doors import Out, Seen, assert_problem, created
from kit.stores import rerun_when_stalled
from retrysafe._policy import REPLAYED_HEADERS, Problem
from retrysafe._scopes import authorization_scope

BODY = b'{"amount": 100, "currency": "EUR"}'
ALLOW_LISTED = ("content-type", "location", "content-location", "etag", "last-modified", "link")
NEVER = ("set-cookie", "date", "x-request-id", "x-ratelimit-remaining")


async def test_rule_07_08_first_runs_then_duplicate_replays_byte_for_byte(serve):
    door = serve()
    first = await door.post("pay-1", BODY)
    assert first.status == 201
    assert not first.replayed
    assert first.header("set-cookie") == "session=s1; Path=/"  # the first caller gets it all
    second = await door.post("pay-1", BODY)
    assert second.status == 201
    assert second.body == first.body
    assert second.json() == {"run": 1, "echo": BODY.decode()}
    assert second.header("idempotent-replayed") == "true"
    for name in ALLOW_LISTED:
        assert second.all(name) == first.all(name), name
    for name in (*NEVER, "x-custom"):
        assert second.header(name) is None, name
    assert second.header("content-length") == str(len(first.body))
    assert door.handler.runs == 1
    assert door.handler.calls[0].body == BODY


async def test_rule_08_configured_headers_are_replayed_too(serve, policy_for):
    door = serve(policy=policy_for(replay_headers=REPLAYED_HEADERS | {"X-Custom"}))
    first = await door.post("pay-2", BODY)
    second = await door.post("pay-2", BODY)
    assert second.replayed
    assert second.header("x-custom") == first.header("x-custom") == "custom-1"
    assert second.header("set-cookie") is None
    assert door.handler.runs == 1


async def test_rule_05_two_principals_with_one_key_never_see_each_others_records(serve, policy_for):
    door = serve(policy=policy_for(scope=authorization_scope))
    alice = [("Authorization", "Bearer alice")]
    bob = [("Authorization", "Bearer bob")]
    a1 = await door.request("POST", key="shared", headers=alice, body=BODY)
    b1 = await door.request("POST", key="shared", headers=bob, body=BODY)
    assert a1.status == b1.status == 201
    assert not b1.replayed  # bob's first request runs: alice's record is invisible to him
    assert a1.json()["run"] == 1
    assert b1.json()["run"] == 2
    # Each principal's duplicate replays its own result; another body is no mismatch for bob.
    a2 = await door.request("POST", key="shared", headers=alice, body=BODY)
    b2 = await door.request("POST", key="shared", headers=bob, body=BODY)
    assert a2.replayed
    assert a2.body == a1.body
    assert b2.replayed
    assert b2.body == b1.body
    # Without credentials the key belongs to nobody the layer can name: refused, never pooled.
    anon = await door.request("POST", key="shared", body=b"other body")
    assert_problem(anon, Problem.UNSCOPED, 400)
    assert door.handler.runs == 2


async def test_rule_05_the_store_never_sees_the_raw_key(serve):
    door = serve()
    key = "raw-key-0123456789"
    await door.post(key, BODY)
    await door.post(key, BODY)
    assert door.store.ids
    assert all(key not in id for id in door.store.ids)
    assert len(set(door.store.ids)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"amount": 999, "currency": "EUR"}'},
        {"body": b""},
        {"path": "/other"},
        {"method": "PATCH"},
        {"query": "dry_run=1"},
    ],
    ids=["body", "empty-body", "path", "method", "query"],
)
async def test_rule_09_mismatch_is_422_and_original_still_replays(serve, change):
    door = serve()
    first = await door.post("pay-3", BODY)
    request = {"method": "POST", "path": "/things", "body": BODY, **change}
    mismatch = await door.request(
        request.pop("method"), request.pop("path"), key="pay-3", **request
    )
    doc = assert_problem(mismatch, Problem.MISMATCH, 422)
    assert "different request" in doc["detail"]
    again = await door.post("pay-3", BODY)
    assert again.replayed
    assert again.body == first.body
    assert door.handler.runs == 1


async def test_rule_06_query_parameter_order_does_not_matter(serve):
    door = serve()
    first = await door.request("POST", key="pay-4", query="a=1&b=2", body=BODY)
    reordered = await door.request("POST", key="pay-4", query="b=2&a=1", body=BODY)
    assert reordered.replayed
    assert reordered.body == first.body
    other = await door.request("POST", key="pay-4", query="a=1&b=3", body=BODY)
    assert_problem(other, Problem.MISMATCH, 422)
    assert door.handler.runs == 1


async def test_rule_06_json_mode_ignores_key_order_and_whitespace(serve, policy_for):
    door = serve(policy=policy_for(body_mode="json"))
    first = await door.post("pay-5", b'{"amount": 100, "currency": "EUR"}')
    same = await door.post("pay-5", b'{\n  "currency":"EUR",\n  "amount":1E2\n}')
    assert same.replayed
    assert same.body == first.body
    other = await door.post("pay-5", b'{"amount": 101, "currency": "EUR"}')
    assert_problem(other, Problem.MISMATCH, 422)
    assert door.handler.runs == 1


async def test_rule_06_bytes_mode_is_the_default_and_counts_every_byte(serve):
    door = serve()
    await door.post("pay-6", b'{"amount": 100, "currency": "EUR"}')
    reply = await door.post("pay-6", b'{"currency": "EUR", "amount": 100}')
    assert_problem(reply, Problem.MISMATCH, 422)
    assert door.handler.runs == 1


async def test_rule_06_json_mode_passes_invalid_json_to_the_handler(serve, policy_for):
    door = serve(policy=policy_for(body_mode="json"))
    broken = b'{"amount": 100,'
    first = await door.post("pay-7", broken)
    assert first.status == 201
    assert door.handler.calls[0].body == broken  # the application answers its own 400
    assert (await door.post("pay-7", broken)).replayed
    assert_problem(await door.post("pay-7", b'{"amount": 100 ,'), Problem.MISMATCH, 422)
    assert door.handler.runs == 1


def answering(status: int):
    def behaviour(seen: Seen, run: int) -> Out:
        out = created(seen, run)
        out.status = status
        if status == 204:
            out.body = b""
        return out

    return behaviour


@pytest.mark.parametrize("status", [200, 201, 202, 204, 400, 404, 409, 422, 499])
async def test_rule_12_2xx_and_4xx_are_stored_and_replayed(serve, status):
    door = serve(answering(status))
    first = await door.post("pay-8", BODY)
    second = await door.post("pay-8", BODY)
    assert first.status == second.status == status
    assert second.replayed
    assert second.body == first.body
    assert door.handler.runs == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_rule_12_5xx_releases_the_claim_so_a_retry_runs_again(serve, status):
    door = serve(lambda seen, run: answering(status if run == 1 else 201)(seen, run))
    first = await door.post("pay-9", BODY)
    assert first.status == status
    retry = await door.post("pay-9", BODY)
    assert retry.status == 201
    assert not retry.replayed
    assert retry.json()["run"] == 2
    assert (await door.post("pay-9", BODY)).replayed
    assert door.handler.runs == 2


async def test_rule_12_exception_releases_the_claim_so_a_retry_runs_again(serve):
    def flaky(seen: Seen, run: int) -> Out:
        if run == 1:
            raise RuntimeError("boom")
        return created(seen, run)

    door = serve(flaky)
    first = await door.post("pay-10", BODY)
    assert first.status == 500
    assert not first.replayed
    retry = await door.post("pay-10", BODY)
    assert retry.status == 201
    assert not retry.replayed
    assert (await door.post("pay-10", BODY)).replayed
    assert door.handler.runs == 2
    assert door.store.count("release") == 1


async def test_rule_12_store_server_errors_stores_5xx(serve, policy_for):
    door = serve(answering(503), policy=policy_for(store_server_errors=True))
    first = await door.post("pay-11", BODY)
    second = await door.post("pay-11", BODY)
    assert first.status == second.status == 503
    assert second.replayed
    assert second.body == first.body
    assert door.handler.runs == 1


async def test_rule_12_refusals_of_this_layer_are_never_stored(serve):
    door = serve()
    assert_problem(await door.post("bad key", BODY), Problem.MALFORMED_KEY, 400)
    await door.post("pay-12", BODY)
    assert_problem(await door.post("pay-12", b"other"), Problem.MISMATCH, 422)
    assert door.store.count("complete") == 1  # only the handler's own 201


@pytest.mark.store_clock
@rerun_when_stalled
async def test_rule_14_replays_within_the_ttl_and_re_executes_after_it(serve, policy_for, kit):
    door = serve(policy=policy_for(ttl=3 * kit.tick))
    key = f"pay-13-{uuid.uuid4().hex[:12]}"  # a key of its own per attempt
    with kit.within(3):  # from before the completion to after the replay
        first = await door.post(key, BODY)
        kit.advance(2 * kit.tick)
        within = await door.post(key, BODY)
    assert within.replayed
    assert within.body == first.body
    kit.advance(2 * kit.tick)  # 4 ticks after completion: past the TTL
    with kit.within(3):  # the same for the new completion
        after = await door.post(key, BODY)
        again = await door.post(key, BODY)
    assert after.status == 201
    assert not after.replayed
    assert after.json()["run"] == 2
    assert again.replayed
    assert again.body == after.body
    assert door.handler.runs == 2


@pytest.mark.store_clock
async def test_rule_14_an_expired_key_may_carry_a_new_request(serve, policy_for, kit):
    door = serve(policy=policy_for(ttl=kit.tick))
    await door.post("pay-14", BODY)
    kit.advance(2 * kit.tick)
    other = await door.post("pay-14", b'{"amount": 5}')  # the tombstone is no mismatch
    assert other.status == 201
    assert door.handler.runs == 2

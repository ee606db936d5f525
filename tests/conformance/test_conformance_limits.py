"""SPEC rules 15-19: unreplayable responses, request body caps, store outages, problem
responses and the current key."""

from __future__ import annotations

import json
import os

import pytest

from kit.doors import Out, Seen, assert_problem, created
from retrysafe import current_key
from retrysafe._policy import Policy, Problem
from retrysafe._problems import render
from retrysafe._scopes import shared_scope

BODY = b'{"amount": 100}'


def streaming(parts: list[bytes], content_type: str = "application/octet-stream"):
    def behaviour(seen: Seen, run: int) -> Out:
        return Out(200, iter(parts), [("content-type", content_type)])

    return behaviour


async def test_rule_15_body_over_the_cache_cap_streams_intact_then_duplicate_is_409(
    serve, policy_for
):
    parts = [os.urandom(700) for _ in range(6)]
    door = serve(streaming(parts), policy=policy_for(max_cached_body=1000))
    first = await door.post("big-1", BODY)
    assert first.status == 200
    assert first.body == b"".join(parts)  # the first caller gets every byte
    assert not first.replayed
    duplicate = await door.post("big-1", BODY)
    doc = assert_problem(duplicate, Problem.UNREPLAYABLE, 409)
    assert "cannot be replayed" in doc["detail"]
    assert door.handler.runs == 1  # never run twice
    assert_problem(await door.post("big-1", BODY), Problem.UNREPLAYABLE, 409)
    assert door.handler.runs == 1


async def test_rule_15_single_body_over_the_cache_cap_is_unreplayable(serve, policy_for):
    body = os.urandom(5000)
    door = serve(lambda seen, run: Out(201, body), policy=policy_for(max_cached_body=4999))
    assert (await door.post("big-2", BODY)).body == body
    assert_problem(await door.post("big-2", BODY), Problem.UNREPLAYABLE, 409)
    assert door.handler.runs == 1


async def test_rule_15_body_exactly_at_the_cache_cap_is_replayed(serve, policy_for):
    parts = [os.urandom(250) for _ in range(4)]
    door = serve(streaming(parts), policy=policy_for(max_cached_body=1000))
    first = await door.post("big-3", BODY)
    second = await door.post("big-3", BODY)
    assert second.replayed
    assert second.body == first.body == b"".join(parts)
    assert door.handler.runs == 1


async def test_rule_15_event_stream_is_never_replayed(serve):
    parts = [b"data: one\n\n", b"data: two\n\n"]
    door = serve(streaming(parts, "text/event-stream; charset=utf-8"))
    first = await door.post("sse-1", BODY)
    assert first.status == 200
    assert first.body == b"".join(parts)
    assert_problem(await door.post("sse-1", BODY), Problem.UNREPLAYABLE, 409)
    assert door.handler.runs == 1


async def test_rule_16_declared_body_over_the_cap_is_413(serve, policy_for):
    door = serve(policy=policy_for(max_body=100))
    reply = await door.post("up-1", b"x" * 101)
    assert_problem(reply, Problem.BODY_TOO_LARGE, 413)
    assert door.handler.runs == 0
    assert door.store.count("claim") == 0
    at_cap = await door.post("up-1", b"x" * 100)
    assert at_cap.status == 201
    assert door.handler.calls[0].body == b"x" * 100


async def test_rule_16_chunked_body_over_the_cap_is_413(serve, policy_for):
    door = serve(policy=policy_for(max_body=100))
    reply = await door.post("up-2", b"y" * 101, chunked=True)
    assert_problem(reply, Problem.BODY_TOO_LARGE, 413)
    assert door.handler.runs == 0
    assert door.store.count("claim") == 0
    at_cap = await door.post("up-2", b"y" * 100, chunked=True)
    assert at_cap.status == 201
    assert door.handler.calls[0].body == b"y" * 100


async def test_rule_16_the_body_cap_applies_to_keyed_requests_only(serve, policy_for):
    door = serve(policy=policy_for(max_body=100))
    reply = await door.post(None, b"z" * 1000)  # nothing to fingerprint: nothing buffered
    assert reply.status == 201
    assert door.handler.calls[0].body == b"z" * 1000


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_rule_16_request_body_is_re_fed_unchanged_to_an_app_reading_in_chunks(serve, chunked):
    body = os.urandom(64 * 1024 + 3)  # binary, with every byte value, not a multiple of reads
    door = serve()
    reply = await door.post("up-3", body, chunked=chunked)
    assert reply.status == 201
    seen = door.handler.calls[0]
    assert seen.body == body
    if chunked or door.name != "starlette":  # httpx.ASGITransport sends a declared body whole
        assert seen.reads > 1  # the app really read it piece by piece
    assert (await door.post("up-3", body, chunked=not chunked)).replayed
    assert door.handler.runs == 1


async def test_rule_16_empty_body_is_re_fed_as_empty(serve):
    door = serve()
    assert (await door.post("up-4", b"")).status == 201
    assert door.handler.calls[0].body == b""
    assert (await door.post("up-4", b"", chunked=True)).replayed


async def test_rule_17_store_unavailable_is_503_with_retry_after_and_handler_not_run(
    serve, policy_for
):
    door = serve(policy=policy_for(unavailable_retry_after=7))
    door.store.down = True
    reply = await door.post("down-1", BODY)
    doc = assert_problem(reply, Problem.STORE_UNAVAILABLE, 503)
    assert "retry" in doc["detail"]
    assert reply.header("retry-after") == "7"
    assert door.handler.runs == 0
    door.store.down = False  # nothing was half-written: the retry runs once, then replays
    retry = await door.post("down-1", BODY)
    assert retry.status == 201
    assert not retry.replayed
    assert (await door.post("down-1", BODY)).replayed
    assert door.handler.runs == 1


async def test_rule_17_fail_open_runs_the_handler(serve, policy_for):
    door = serve(policy=policy_for(fail_open=True))
    door.store.down = True
    for _ in range(2):  # nothing can be recorded, so nothing is replayed either
        reply = await door.post("down-2", BODY)
        assert reply.status == 201
        assert not reply.replayed
    assert door.handler.runs == 2
    assert door.handler.calls[0].state_key == "down-2"


async def test_rule_18_problem_status_codes_are_configurable(serve, policy_for):
    statuses = {
        Problem.MISMATCH: 409,
        Problem.MALFORMED_KEY: 422,
        Problem.MISSING_KEY: 428,
        Problem.BODY_TOO_LARGE: 400,
        Problem.STORE_UNAVAILABLE: 500,
    }
    door = serve(policy=policy_for(problem_status=statuses, required=True, max_body=50))
    await door.post("cfg-1", BODY)
    assert_problem(await door.post("cfg-1", b"other"), Problem.MISMATCH, 409)
    assert_problem(await door.post("bad key", BODY), Problem.MALFORMED_KEY, 422)
    assert_problem(await door.post(None, BODY), Problem.MISSING_KEY, 428)
    assert_problem(await door.post("cfg-2", b"x" * 51), Problem.BODY_TOO_LARGE, 400)
    door.store.down = True
    assert_problem(await door.post("cfg-3", BODY), Problem.STORE_UNAVAILABLE, 500)
    assert door.handler.runs == 1


def test_rule_18_problem_type_uris_are_distinct():
    # Each test above pins one problem's type; here: no two problems share one.
    types = {
        json.loads(render(p, "detail", Policy(scope=shared_scope)).body)["type"] for p in Problem
    }
    assert len(types) == len(Problem)


async def test_rule_19_the_handler_sees_the_current_key(serve):
    seen_inside: list[str | None] = []

    def behaviour(seen: Seen, run: int) -> Out:
        seen_inside.append(current_key())
        return created(seen, run)

    door = serve(behaviour)
    await door.post('"pay\\"ment-1"', BODY)
    call = door.handler.calls[0]
    assert call.state_key == 'pay"ment-1'  # request.state / environ, unquoted
    assert call.context_key == 'pay"ment-1'  # retrysafe.current_key() in the app
    assert seen_inside == ['pay"ment-1']  # and in code the app calls
    assert current_key() is None  # nothing leaks out of the request
    await door.post(None, BODY)
    assert door.handler.calls[1].context_key is None
    assert door.handler.calls[1].state_key is None

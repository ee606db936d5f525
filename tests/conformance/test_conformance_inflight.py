"""SPEC rules 10 and 13: duplicates of a request still in flight, leases and heartbeats.

The first request runs a handler blocked on a :class:`~kit.doors.Gate` the test opens; the spy
store tells the test when a duplicate is waiting. No sleeps.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kit.doors import Gate, Out, Seen, assert_problem, created, until
from kit.scopes import shared_id
from kit.stores import rerun_when_stalled
from retrysafe._fingerprint import RequestFacts
from retrysafe._policy import Problem
from retrysafe._records import Claimed, StoredResponse

BODY = b'{"amount": 100}'


async def test_rule_10_duplicate_in_flight_waits_then_replays(serve):
    gate = Gate()
    door = serve(gate)
    first = asyncio.create_task(door.post("job-1", BODY))
    await until(gate.entered)
    duplicate = asyncio.create_task(door.post("job-1", BODY))
    await door.store.until("watch", 1)  # the duplicate is waiting for the first
    assert not duplicate.done()
    gate.opened.set()
    one, two = await asyncio.gather(first, duplicate)
    assert one.status == two.status == 201
    assert not one.replayed
    assert two.replayed
    assert two.body == one.body
    assert door.handler.runs == 1


async def test_rule_10_duplicate_outliving_the_wait_bound_is_409_with_retry_after(
    serve, policy_for, kit
):
    gate = Gate()
    door = serve(gate, policy=policy_for(wait=0.2 * kit.tick, in_flight_retry_after=2))
    first = asyncio.create_task(door.post("job-2", BODY))
    await until(gate.entered)
    conflict = await door.post("job-2", BODY)
    doc = assert_problem(conflict, Problem.IN_FLIGHT, 409)
    assert "still being processed" in doc["detail"]
    assert conflict.header("retry-after") == "2"
    assert not first.done()
    gate.opened.set()
    assert (await first).status == 201
    later = await door.post("job-2", BODY)
    assert later.replayed
    assert door.handler.runs == 1


async def test_rule_10_in_flight_mismatch_is_422_at_once(serve):
    gate = Gate()
    door = serve(gate)
    first = asyncio.create_task(door.post("job-3", BODY))
    await until(gate.entered)
    assert_problem(await door.post("job-3", b"other"), Problem.MISMATCH, 422)
    assert door.store.count("watch") == 0
    gate.opened.set()
    assert (await first).status == 201
    assert door.handler.runs == 1


async def test_rule_10_12_waiting_duplicate_runs_itself_when_the_first_fails(serve):
    def fail_first(seen: Seen, run: int) -> Out:
        out = created(seen, run)
        out.status = 503 if run == 1 else 201
        return out

    gate = Gate(then=fail_first)
    door = serve(gate)
    first = asyncio.create_task(door.post("job-4", BODY))
    await until(gate.entered)
    gate.entered.clear()
    duplicate = asyncio.create_task(door.post("job-4", BODY))
    await door.store.until("watch", 1)
    gate.opened.set()  # the first answers 503: its claim is released, the duplicate takes it
    one, two = await asyncio.gather(first, duplicate)
    assert one.status == 503
    assert two.status == 201
    assert not two.replayed
    assert two.json()["run"] == 2
    assert door.handler.runs == 2


def _fresh(key: str) -> str:
    """``key`` made unique, for a test that may run again (``rerun_when_stalled``)."""
    return f"{key}-{uuid.uuid4().hex[:12]}"


@rerun_when_stalled
async def test_rule_13_heartbeat_keeps_the_claim_of_a_handler_outliving_its_lease(
    serve, policy_for, kit
):
    gate = Gate()
    policy = policy_for(lease=2.5 * kit.tick, heartbeat=0.05 * kit.tick, wait=0.1 * kit.tick)
    door = serve(gate, policy=policy)
    key = _fresh("job-5")
    first = asyncio.create_task(door.post(key, BODY))
    try:
        await until(gate.entered)
        for _ in range(2):  # 2 of the 3 ticks that pass in all; a renewal follows each
            renewed = door.store.count("renew")
            kit.advance(1 * kit.tick)
            await door.store.until("renew", renewed + 1)
        # "Still held" is an upper bound on a real clock: the latest renewal must be less than a
        # lease before the duplicate's claim. The renewals of one claim run one after another
        # and are counted as they end, so the second one counted after this count began after
        # it: from here to the duplicate's answer must take less than the lease.
        with kit.within(2.5):
            renewed = door.store.count("renew")
            kit.advance(1 * kit.tick)  # 3 ticks in all: past the 2.5-tick lease
            await door.store.until("renew", renewed + 2)
            conflict = await door.post(key, BODY)  # still held: no takeover, no second run
    finally:
        gate.opened.set()  # a stalled attempt ends its request too
        done = await first
    assert_problem(conflict, Problem.IN_FLIGHT, 409)
    assert door.handler.runs == 1
    assert done.status == 201
    assert not done.replayed
    replay = await door.post(key, BODY)
    assert replay.replayed
    assert replay.body == done.body
    assert door.handler.runs == 1


@pytest.mark.store_clock
@rerun_when_stalled
async def test_rule_13_dead_holder_lease_lapses_and_a_duplicate_takes_over(serve, policy_for, kit):
    policy = policy_for(lease=2 * kit.tick, wait=0.1 * kit.tick)
    door = serve(policy=policy)
    # A holder that claimed the key and died: nobody renews its lease.
    facts = RequestFacts("POST", "/things", "", (), BODY)
    key = _fresh("job-6")
    id = shared_id(door.store.inner, key)
    with kit.within(2):  # from before the claim to after the duplicate found it held
        dead = door.store.inner.claim(id, policy.fingerprint_of(facts), policy.lease_s)
        held = await door.post(key, BODY)
    assert isinstance(dead, Claimed)
    assert_problem(held, Problem.IN_FLIGHT, 409)
    assert door.handler.runs == 0
    kit.advance(3 * kit.tick)
    took_over = await door.post(key, BODY)
    assert took_over.status == 201
    assert not took_over.replayed
    assert door.handler.runs == 1
    # The dead holder's late write is fenced out; the new result stands.
    assert not door.store.inner.complete(id, dead.token, StoredResponse(200), 60, 60)
    replay = await door.post(key, BODY)
    assert replay.replayed
    assert replay.body == took_over.body


@pytest.mark.store_clock
async def test_rule_13_09_lapsed_claim_is_taken_over_only_by_the_same_request(
    serve, policy_for, kit
):
    policy = policy_for(lease=2 * kit.tick, wait=0.1 * kit.tick)
    door = serve(policy=policy)
    facts = RequestFacts("POST", "/things", "", (), BODY)
    id = shared_id(door.store.inner, "job-7")
    assert isinstance(
        door.store.inner.claim(id, policy.fingerprint_of(facts), policy.lease_s), Claimed
    )
    kit.advance(3 * kit.tick)
    other = await door.post("job-7", b'{"amount": 5}')  # another request under the dead key
    assert_problem(other, Problem.MISMATCH, 422)
    assert door.handler.runs == 0
    retry = await door.post("job-7", BODY)  # the dead holder's own retry takes over
    assert retry.status == 201
    assert door.handler.runs == 1

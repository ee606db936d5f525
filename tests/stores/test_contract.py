"""The store protocol (SPEC 36, ``stores/_base.py``), rule by rule, against every store kind.

Each test runs once per entry of ``STORE_KINDS``, once more behind the local replay cache, and
on a real three-node Redis Cluster (the ``kit`` fixture below). Time moves only through
``kit.advance`` and durations are ``kit.tick`` multiples (see ``kit.store_claims``), so Redis and
PostgreSQL kits run these bodies unchanged on their real clocks. What only a store with a
server can show (a settlement published by another process's handle, a watch ended by a lapsed
lease on the server's clock) runs on the server kinds (the ``server_kit`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.store_claims import FP, LEASE, OK, OTHER_FP, claimed, existing, first_claim, new_id
from kit.stores import (
    ALL_KINDS,
    FAR,
    REDIS_CLUSTER,
    FakeClock,
    StoreKit,
    kit_fixture,
    rerun_when_stalled,
)
from kit.wakes import HANG, NEVER, WakeProbe
from retrysafe import open_store
from retrysafe._records import Claimed, Existing, State, StoredResponse
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.stores._base import DualStore
from retrysafe.stores.sqlite import SQLiteStore

# Every store kind, and each behind the local replay cache: the contract holds through it; a
# Redis Cluster too, where each record's keys must share one slot.
kit = kit_fixture([*ALL_KINDS, REDIS_CLUSTER])
# The kinds whose handles share a server: another process's handle is another connection.
server_kit = kit_fixture(["postgres", "redis", REDIS_CLUSTER], name="server_kit")

# -- claim -------------------------------------------------------------------------------------


def test_first_claim_is_claimed_and_recorded_in_flight(kit: StoreKit) -> None:
    id = new_id()
    c = first_claim(kit.store.claim(id, FP, FAR * kit.tick))
    assert c.token > 0
    record = kit.store.get(id)
    assert record is not None
    assert (record.id, record.fingerprint, record.state, record.token) == (
        id,
        FP,
        State.IN_FLIGHT,
        c.token,
    )


@pytest.mark.parametrize("fingerprint", [FP, OTHER_FP])
def test_second_claim_sees_the_first_in_flight_and_changes_nothing(
    kit: StoreKit, fingerprint: str
) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    before = kit.store.get(id)
    for handle in (kit.store, kit.reopen()):  # this process, and another one's handle
        e = existing(handle.claim(id, fingerprint, FAR * kit.tick))
        # The live record is the first claim's, whatever the duplicate's fingerprint (SPEC 9, 10).
        assert (e.record.state, e.record.token, e.record.fingerprint) == (
            State.IN_FLIGHT,
            c.token,
            FP,
        )
        assert e.record.response is None
    assert kit.store.get(id) == before


def test_claims_of_different_ids_are_independent(kit: StoreKit) -> None:
    a, b = new_id("a"), new_id("b")
    ca = claimed(kit.store.claim(a, FP, FAR * kit.tick))
    cb = claimed(kit.store.claim(b, FP, FAR * kit.tick))
    assert kit.store.complete(a, ca.token, OK, FAR * kit.tick, FAR * kit.tick)
    record = kit.store.get(b)
    assert record is not None
    assert (record.state, record.token) == (State.IN_FLIGHT, cb.token)


# -- complete and replay -----------------------------------------------------------------------

RESPONSES = {
    "json": OK,
    "empty-body": StoredResponse(204, (), b""),
    "binary-body": StoredResponse(
        200, (("Content-Type", "application/octet-stream"),), bytes(range(256)) * 3
    ),
    "nul-and-invalid-utf8": StoredResponse(200, (), b"\x00\xff\xfe\x00\xc3\x28"),
    "repeated-headers-in-order": StoredResponse(
        201,
        (
            ("Link", "</a>; rel=next"),
            ("Location", "/payments/7"),
            ("Link", "</b>; rel=prev"),
            ("ETag", '"x y"'),
        ),
        b"created",
    ),
    "client-error": StoredResponse(422, (("Content-Type", "text/plain"),), b"nope"),
    "trace-ids": StoredResponse(
        200, (), b"traced", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331"
    ),
    "one-mebibyte": StoredResponse(200, (), bytes(range(256)) * 4096),
}


@pytest.mark.parametrize("response", list(RESPONSES.values()), ids=list(RESPONSES))
def test_replay_returns_the_exact_stored_response(kit: StoreKit, response: StoredResponse) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert kit.store.complete(id, c.token, response, FAR * kit.tick, FAR * kit.tick)
    for handle in (kit.store, kit.reopen()):  # same answer through another connection
        e = existing(handle.claim(id, OTHER_FP, FAR * kit.tick))
        assert e.record.state is State.COMPLETED
        assert (e.record.fingerprint, e.record.token) == (FP, c.token)
        assert e.record.response == response
        assert type(e.record.response.body) is bytes  # type: ignore[union-attr]
        stored = handle.get(id)
        if e.cached and stored is not None:
            # A replay cache built this answer from the completion it made (stores/cached.py):
            # everything but the times, which it can only estimate, is the store's record.
            times = ("lease_until", "expires_at", "retain_until", "created_at")
            stored = stored._replace(**{name: getattr(e.record, name) for name in times})
        assert stored == e.record


def test_a_completed_record_cannot_be_completed_again(kit: StoreKit) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert kit.store.complete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    before = kit.store.get(id)
    other = StoredResponse(500, (), b"late")
    assert not kit.store.complete(id, c.token, other, FAR * kit.tick, FAR * kit.tick)
    assert not kit.store.renew(id, c.token, FAR * kit.tick)
    assert not kit.store.release(id, c.token)
    assert kit.store.get(id) == before


def test_unreplayable_completion_keeps_status_and_trace_but_drops_body(kit: StoreKit) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    streamed = StoredResponse(
        200,
        (("Content-Type", "text/event-stream"),),
        bytes(range(256)) * 4096,  # 1 MiB that is not kept
        replayable=False,
        trace_id="t" * 32,
        span_id="s" * 16,
    )
    assert kit.store.complete(id, c.token, streamed, FAR * kit.tick, FAR * kit.tick)
    e = existing(kit.store.claim(id, FP, FAR * kit.tick))
    assert e.record.state is State.UNREPLAYABLE
    assert e.record.response == StoredResponse(
        200, (), b"", replayable=False, trace_id="t" * 32, span_id="s" * 16
    )


# -- fencing -----------------------------------------------------------------------------------

Op = Callable[[DualStore, str, int, float], bool]
OPS: dict[str, Op] = {
    "complete": lambda s, id, token, tick: s.complete(id, token, OK, FAR * tick, FAR * tick),
    "renew": lambda s, id, token, tick: s.renew(id, token, FAR * tick),
    "release": lambda s, id, token, tick: s.release(id, token),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("wrong", [-1, 1, 1_000_000])
def test_a_wrong_token_is_refused_and_changes_nothing(kit: StoreKit, op: str, wrong: int) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    before = kit.store.get(id)
    assert OPS[op](kit.store, id, c.token + wrong, kit.tick) is False
    assert OPS[op](kit.store, id, 0, kit.tick) is False
    assert kit.store.get(id) == before


@pytest.mark.parametrize("op", sorted(OPS))
def test_any_token_is_refused_on_an_absent_record(kit: StoreKit, op: str) -> None:
    id = new_id()
    assert OPS[op](kit.store, id, 1, kit.tick) is False
    assert kit.store.get(id) is None


def test_release_lets_the_next_claim_run_fresh(kit: StoreKit) -> None:
    id = new_id()
    first = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert kit.store.release(id, first.token)
    assert kit.store.get(id) is None
    assert not kit.store.release(id, first.token)  # released once is released
    again = first_claim(kit.store.claim(id, OTHER_FP, FAR * kit.tick))
    # A token is never minted twice, even for a key that was released in the same instant.
    assert again.token > first.token
    before = kit.store.get(id)
    for op in OPS.values():
        assert op(kit.store, id, first.token, kit.tick) is False
    assert kit.store.get(id) == before


# -- leases ------------------------------------------------------------------------------------


@rerun_when_stalled
def test_a_live_lease_is_not_taken_over(kit: StoreKit) -> None:
    id = new_id()
    with kit.within(LEASE):  # from before the claim to after the duplicate's
        c = claimed(kit.store.claim(id, FP, LEASE * kit.tick))
        kit.advance(2 * kit.tick)  # 2 < 2.5 ticks
        # A retry of the same request: it would take a lapsed lease over (another request
        # never does, SPEC 9, so it could not tell a live lease from a lapsed one).
        e = existing(kit.store.claim(id, FP, FAR * kit.tick))
    assert (e.record.state, e.record.token) == (State.IN_FLIGHT, c.token)


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_fenced_out(kit: StoreKit) -> None:
    id = new_id()
    old = claimed(kit.store.claim(id, FP, LEASE * kit.tick))
    kit.advance(3 * kit.tick)
    new = claimed(kit.store.claim(id, FP, FAR * kit.tick))  # a retry of the same request
    assert new.recovered is True
    assert new.expired_before is False
    assert new.previous_fingerprint == FP
    assert new.token > old.token
    record = kit.store.get(id)
    assert record is not None
    assert (record.state, record.token, record.fingerprint) == (State.IN_FLIGHT, new.token, FP)
    # A second duplicate now sees the new holder's live lease.
    assert existing(kit.store.claim(id, FP, FAR * kit.tick)).record.token == new.token
    for name, op in OPS.items():
        assert op(kit.store, id, old.token, kit.tick) is False, name
    assert kit.store.get(id) == record
    assert kit.store.complete(id, new.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert existing(kit.store.claim(id, FP, FAR * kit.tick)).record.response == OK


def test_a_lapsed_lease_is_not_taken_over_by_a_different_request(kit: StoreKit) -> None:
    # SPEC 9: another request under the key is a mismatch even when the holder died; only a
    # retry of the same request recovers the key.
    id = new_id()
    old = claimed(kit.store.claim(id, FP, LEASE * kit.tick))
    kit.advance(3 * kit.tick)
    before = kit.store.get(id)
    e = existing(kit.store.claim(id, OTHER_FP, FAR * kit.tick))
    assert (e.record.state, e.record.token, e.record.fingerprint) == (
        State.IN_FLIGHT,
        old.token,
        FP,
    )
    assert kit.store.get(id) == before
    assert claimed(kit.store.claim(id, FP, FAR * kit.tick)).recovered


def test_a_holder_past_its_lease_still_completes_when_nobody_took_over(kit: StoreKit) -> None:
    # The lease only decides whether a duplicate may take over; the token decides who holds.
    id = new_id()
    c = claimed(kit.store.claim(id, FP, LEASE * kit.tick))
    kit.advance(3 * kit.tick)
    assert kit.store.complete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert existing(kit.store.claim(id, FP, FAR * kit.tick)).record.response == OK


@rerun_when_stalled
def test_renew_extends_the_lease_so_no_takeover_happens(kit: StoreKit) -> None:
    # Leases of 1.5 ticks (a real clock sleeps every tick): the events are the same.
    id = new_id()
    c = claimed(kit.store.claim(id, FP, 1.5 * kit.tick))
    first = kit.store.get(id)
    kit.advance(1 * kit.tick)
    with kit.within(1.5):  # from before the renewal to after the duplicate sees it held
        assert kit.store.renew(id, c.token, 1.5 * kit.tick)  # now lapses at 1 + 1.5 ticks
        renewed = kit.store.get(id)
        kit.advance(1 * kit.tick)  # 2 ticks: past the first lease, inside the renewed one
        held = existing(kit.store.claim(id, FP, 1.5 * kit.tick))
    assert first is not None
    assert renewed is not None
    assert renewed.lease_until > first.lease_until
    assert (renewed.state, renewed.token, renewed.fingerprint) == (State.IN_FLIGHT, c.token, FP)
    assert held.record.token == c.token
    kit.advance(1 * kit.tick)  # 3 ticks: past the renewed lease as well
    taken = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert taken.recovered
    assert taken.token > c.token


@rerun_when_stalled
def test_renew_never_shortens_a_lease(kit: StoreKit) -> None:
    id = new_id()
    with kit.within(10):  # from before the claim to after the duplicate sees it held
        c = claimed(kit.store.claim(id, FP, 10 * kit.tick))
        before = kit.store.get(id)
        assert kit.store.renew(id, c.token, 0.5 * kit.tick)
        after = kit.store.get(id)
        kit.advance(2 * kit.tick)  # past the 0.5-tick renewal, had it shortened the lease
        duplicate = kit.store.claim(id, FP, FAR * kit.tick)
    assert before is not None
    assert after is not None
    assert after.lease_until >= before.lease_until
    assert isinstance(duplicate, Existing)


# -- expiry (SPEC 14) --------------------------------------------------------------------------


@rerun_when_stalled
def test_ttl_lapse_turns_the_record_into_an_expired_signal_then_nothing(kit: StoreKit) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    with kit.within(1.5):  # from before the completion to after the replay
        assert kit.store.complete(id, c.token, OK, 1.5 * kit.tick, FAR * kit.tick)
        kit.advance(1 * kit.tick)  # 1 < 1.5: still replays
        replay = existing(kit.store.claim(id, FP, FAR * kit.tick))
    assert replay.record.response == OK
    kit.advance(1 * kit.tick)  # 2: TTL over, the tombstone kept (FAR)
    again = claimed(kit.store.claim(id, OTHER_FP, FAR * kit.tick))
    assert again.expired_before is True
    assert again.recovered is False
    assert again.previous_fingerprint == FP
    assert again.token > c.token
    record = kit.store.get(id)
    assert record is not None
    assert (record.state, record.fingerprint, record.token) == (
        State.IN_FLIGHT,
        OTHER_FP,
        again.token,
    )
    for op in OPS.values():
        assert op(kit.store, id, c.token, kit.tick) is False


@rerun_when_stalled
def test_after_the_retention_window_a_claim_is_a_plain_first_claim(kit: StoreKit) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    with kit.within(1.5):  # from before the completion to after the tombstone is seen
        # The shortest TTL and retention (whole: the window ends at 0.5 + 1 ticks, off a tick).
        assert kit.store.complete(id, c.token, OK, 0.5 * kit.tick, 1 * kit.tick)
        kit.advance(1 * kit.tick)  # inside the tombstone window: get still sees something
        tomb = kit.store.get(id)
    assert tomb is not None
    # SPEC 14: the key is remembered (fingerprint, token) without its response.
    assert (tomb.fingerprint, tomb.token, tomb.state, tomb.response) == (
        FP,
        c.token,
        State.TOMBSTONE,
        None,
    )
    kit.advance(1 * kit.tick)  # 2 > 0.5 + 1: tombstone gone
    assert kit.store.get(id) is None
    fresh = first_claim(kit.store.claim(id, OTHER_FP, FAR * kit.tick))
    assert fresh.token > c.token


def test_unreplayable_records_expire_like_completed_ones(kit: StoreKit) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    lost = StoredResponse(200, (), b"x", replayable=False)
    assert kit.store.complete(id, c.token, lost, 0.5 * kit.tick, FAR * kit.tick)
    kit.advance(1 * kit.tick)
    assert claimed(kit.store.claim(id, FP, FAR * kit.tick)).expired_before is True


# -- get and delete ----------------------------------------------------------------------------


def test_get_follows_the_record_through_its_life(kit: StoreKit) -> None:
    id = new_id()
    assert kit.store.get(id) is None
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    in_flight = kit.store.get(id)
    assert in_flight is not None
    assert (in_flight.state, in_flight.response) == (State.IN_FLIGHT, None)
    assert kit.store.complete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    done = kit.store.get(id)
    assert done is not None
    assert (done.state, done.token, done.fingerprint, done.response) == (
        State.COMPLETED,
        c.token,
        FP,
        OK,
    )
    assert done.expires_at > in_flight.created_at


def test_delete_removes_a_record_whatever_its_state(kit: StoreKit) -> None:
    id = new_id()
    assert kit.store.delete(id) is False
    held = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert kit.store.delete(id) is True
    assert kit.store.get(id) is None
    assert kit.store.delete(id) is False
    # The deleted claim's holder is fenced out, and the key runs fresh with a newer token.
    assert not kit.store.complete(id, held.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert kit.store.get(id) is None
    again = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert again.token > held.token
    assert not kit.store.complete(id, held.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert kit.store.complete(id, again.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert kit.store.delete(id) is True
    assert not again.expired_before
    assert not claimed(kit.store.claim(id, FP, FAR * kit.tick)).expired_before


def test_delete_past_retention_finds_nothing_though_no_purge_ran(kit: StoreKit) -> None:
    # Found means "get would have returned it": a row past its retention that no purge has
    # removed yet (SQLite, PostgreSQL keep it until one runs) is already gone to callers.
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    assert kit.store.complete(id, c.token, OK, 1 * kit.tick, 1 * kit.tick)
    kit.advance(3 * kit.tick)
    assert kit.store.get(id) is None
    assert kit.store.delete(id) is False


# -- watch / awatch ----------------------------------------------------------------------------

# No test here times a wake-up. The ``wakes`` probe (tests/kit/wakes.py) turns polling off and
# sees each waiter block on its notifier event and be woken by it; leases are far away, so a
# watch can only end by the notification, by its timeout or at once. HANG bounds a hang only.


def _settle(kit: StoreKit, id: str, token: int, how: str) -> None:
    if how == "complete":
        assert kit.store.complete(id, token, OK, FAR * kit.tick, FAR * kit.tick)
    elif how == "release":
        assert kit.store.release(id, token)
    else:
        assert kit.store.delete(id)


def _in_thread(call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)  # daemon: a hang fails, not blocks
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["complete", "release", "delete"])
def test_watch_is_woken_by_the_settlement_made_in_another_thread(
    kit: StoreKit, wakes: WakeProbe, how: str
) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    seen: dict[str, object] = {}

    def watcher() -> None:
        kit.store.watch(id, NEVER)
        seen["record"] = kit.store.get(id)

    thread = _in_thread(watcher)
    assert wakes.wait_parked(), "the watcher never waited on the in-flight record"
    assert wakes.woken == 0
    _settle(kit, id, c.token, how)
    thread.join(HANG)
    assert not thread.is_alive(), "the settlement did not wake the watcher"
    assert wakes.woken == 1  # by the notification: no poll, no timeout, no lapsed lease
    record = seen["record"]
    if how == "complete":
        assert record is not None
        assert record.state is State.COMPLETED  # type: ignore[attr-defined]
    else:
        assert record is None


def test_watch_returns_after_the_timeout_when_nothing_happens(
    kit: StoreKit, wakes: WakeProbe
) -> None:
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    start = time.monotonic()
    kit.store.watch(id, 0.3)
    # A lower bound only (a loaded machine makes waits longer, never shorter): it waited on
    # the record, nothing woke it, and only its timeout can have ended the wait.
    assert time.monotonic() - start >= 0.29
    assert (wakes.parked, wakes.woken) == (1, 0)
    record = kit.store.get(id)
    assert record is not None
    assert (record.state, record.token) == (State.IN_FLIGHT, c.token)


@pytest.mark.parametrize("state", ["absent", "completed"])
def test_watch_returns_at_once_when_nothing_is_in_flight(
    kit: StoreKit, wakes: WakeProbe, state: str
) -> None:
    id = new_id()
    if state == "completed":
        c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
        _settle(kit, id, c.token, "complete")
    thread = _in_thread(lambda: kit.store.watch(id, NEVER))
    thread.join(HANG)
    assert not thread.is_alive()
    assert wakes.parked == 0  # at once: it never waited


@pytest.mark.parametrize("how", ["complete", "release"])
@pytest.mark.parametrize("settler", ["task", "thread"])
async def test_awatch_is_woken_by_the_settlement(
    kit: StoreKit, wakes: WakeProbe, how: str, settler: str
) -> None:
    id = new_id()
    c = claimed(await kit.store.aclaim(id, FP, FAR * kit.tick))
    task = asyncio.create_task(kit.store.awatch(id, NEVER))
    assert await asyncio.to_thread(wakes.wait_parked), "awatch never waited on the record"
    assert not task.done()
    if settler == "task":
        if how == "complete":
            assert await kit.store.acomplete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
        else:
            assert await kit.store.arelease(id, c.token)
    else:  # a completion on another thread must reach a task on this loop
        await asyncio.to_thread(_settle, kit, id, c.token, how)
    await asyncio.wait_for(task, HANG)
    assert wakes.woken == 1  # by the notification: no poll, no timeout, no lapsed lease
    record = await kit.store.aget(id)
    assert (record is None) == (how == "release")


async def test_awatch_returns_after_the_timeout_when_nothing_happens(
    kit: StoreKit, wakes: WakeProbe
) -> None:
    id = new_id()
    claimed(await kit.store.aclaim(id, FP, FAR * kit.tick))
    start = time.monotonic()
    await kit.store.awatch(id, 0.3)
    assert time.monotonic() - start >= 0.29  # a lower bound only, as in the sync test
    assert (wakes.parked, wakes.woken) == (1, 0)
    record = await kit.store.aget(id)
    assert record is not None
    assert record.state is State.IN_FLIGHT


async def test_many_awatchers_all_wake_on_one_completion(kit: StoreKit, wakes: WakeProbe) -> None:
    id = new_id()
    c = claimed(await kit.store.aclaim(id, FP, FAR * kit.tick))
    tasks = [asyncio.create_task(kit.store.awatch(id, NEVER)) for _ in range(10)]
    assert await asyncio.to_thread(wakes.wait_parked, 10)
    assert not any(task.done() for task in tasks)
    assert await kit.store.acomplete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    assert wakes.woken == 10


def _listening(store: DualStore) -> bool:
    """Until the store's pub/sub (LISTEN) subscription is up: a message sent before it would
    be lost, and with polling off (``wakes``) the waiter would then wait for ever."""
    listener = store._listener  # type: ignore[attr-defined]
    listener.ensure_started()
    return bool(listener.ready.wait(HANG))


def test_watch_is_woken_by_a_completion_in_another_process(
    server_kit: StoreKit, wakes: WakeProbe
) -> None:
    kit = server_kit
    id = new_id()
    c = claimed(kit.store.claim(id, FP, FAR * kit.tick))
    other = kit.reopen()  # another process's handle: its completion reaches us only published
    assert _listening(kit.store)
    thread = _in_thread(lambda: kit.store.watch(id, NEVER))
    assert wakes.wait_parked(), "the waiter never waited on the in-flight record"
    assert other.complete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    thread.join(HANG)
    assert not thread.is_alive(), "the published completion did not wake the waiter"
    assert wakes.woken == 1  # the notification woke it: polling is off


async def test_awatch_is_woken_by_a_completion_in_another_process(
    server_kit: StoreKit, wakes: WakeProbe
) -> None:
    kit = server_kit
    id = new_id()
    c = claimed(await kit.store.aclaim(id, FP, FAR * kit.tick))
    other = kit.reopen()
    assert await asyncio.to_thread(_listening, kit.store)
    task = asyncio.create_task(kit.store.awatch(id, NEVER))
    assert await asyncio.to_thread(wakes.wait_parked), "awatch never waited on the record"
    assert not task.done()
    done = await asyncio.to_thread(other.complete, id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert done
    await asyncio.wait_for(task, HANG)
    assert wakes.woken == 1  # the published completion woke the task: polling is off


def test_watch_returns_when_the_lease_lapses_on_the_server_clock(
    server_kit: StoreKit, wakes: WakeProbe
) -> None:
    # A takeover is possible once the lease lapses: a waiter stops waiting then, although
    # nothing was published and its own timeout is far away.
    kit = server_kit
    id = new_id()
    claimed(kit.store.claim(id, FP, LEASE * kit.tick))
    thread = _in_thread(lambda: kit.store.watch(id, NEVER))
    thread.join(HANG)
    assert not thread.is_alive(), "the waiter outlived the lease"
    assert wakes.woken == 0  # nothing was published: the lease's end ended the wait
    assert claimed(kit.store.claim(id, FP, FAR * kit.tick)).recovered


# -- sync / async twins ------------------------------------------------------------------------

# One script of operations; "$" stands for the token of the latest claim of that id. Steps
# between "within" and "end" see a deadline still ahead: on a real clock they run inside
# ``kit.within`` (both flavours, from before the step that set it).
SCRIPT: list[tuple[str, tuple[object, ...]]] = [
    ("claim", (FP, LEASE)),
    ("claim", (OTHER_FP, FAR)),  # another request: held, lapsed or not (SPEC 9)
    ("renew", ("$", LEASE)),
    ("renew", (-1, FAR)),
    ("get", ()),
    ("advance", (3,)),
    ("claim", (OTHER_FP, FAR)),  # lapsed (renewed at 0, lease 2.5), other request: held
    ("claim", (FP, FAR)),  # the same request: takeover
    ("complete", ("$old", OK, FAR, FAR)),
    ("within", (2.5,)),
    ("complete", ("$", OK, 2.5, FAR)),
    ("claim", (FP, FAR)),  # a replay
    ("release", ("$",)),
    ("get", ()),  # completed, with its response
    ("end", ()),
    ("advance", (3,)),
    ("claim", (FP, FAR)),  # TTL over: expired
    ("release", ("$",)),
    ("release", ("$",)),
    ("get", ()),
    ("claim", (FP, FAR)),
    ("delete", ()),
    ("delete", ()),
    ("get", ()),
]
_TIMED = {"claim": (1,), "renew": (1,), "complete": (2, 3)}  # tick-scaled argument positions


def _normal(value: object, tokens: list[int]) -> object:
    """A result with its id and tokens replaced by stable names, so two ids compare equal."""

    def tok(token: int) -> str:
        return f"token#{tokens.index(token)}" if token in tokens else "unknown-token"

    if isinstance(value, Claimed):
        flags = (value.expired_before, value.recovered, value.previous_fingerprint)
        return ("claimed", tok(value.token), *flags)
    if isinstance(value, Existing):
        value = value.record
    if value is None or isinstance(value, bool):
        return value
    r = value  # a Record
    return ("record", r.fingerprint, r.state, tok(r.token), r.response)  # type: ignore[attr-defined]


@rerun_when_stalled
async def test_every_async_method_agrees_with_its_sync_twin(kit: StoreKit) -> None:
    store = kit.store
    ids = {"sync": new_id("sync"), "async": new_id("async")}
    tokens: dict[str, list[int]] = {"sync": [], "async": []}
    window = contextlib.ExitStack()  # the open "within", if any: a failure in it is seen there
    with window:
        for step, (name, raw) in enumerate(SCRIPT):
            if name == "advance":
                kit.advance(raw[0] * kit.tick)  # type: ignore[operator]
                continue
            if name == "within":
                window.enter_context(kit.within(raw[0]))  # type: ignore[arg-type]
                continue
            if name == "end":
                window.close()
                continue
            got = {}
            for flavour in ("sync", "async"):
                args = list(raw)
                for i in _TIMED.get(name, ()):
                    args[i] = args[i] * kit.tick  # type: ignore[operator]
                held = tokens[flavour]
                args = [(held[-1] if a == "$" else held[-2] if a == "$old" else a) for a in args]
                if flavour == "sync":
                    result = getattr(store, name)(ids[flavour], *args)
                else:
                    result = await getattr(store, "a" + name)(ids[flavour], *args)
                if isinstance(result, Claimed):
                    held.append(result.token)
                got[flavour] = _normal(result, held)
            assert got["sync"] == got["async"], f"step {step}: {name}{raw}"
    assert len(tokens["sync"]) == len(tokens["async"]) == 4


async def test_closing_another_handle_leaves_the_data_and_this_handle_working(
    kit: StoreKit,
) -> None:
    id = new_id()
    c = claimed(await kit.store.aclaim(id, FP, FAR * kit.tick))
    other = kit.reopen()
    assert await other.acomplete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    await other.aclose()
    assert existing(await kit.store.aclaim(id, FP, FAR * kit.tick)).record.response == OK
    claimed(kit.store.claim(new_id(), FP, FAR * kit.tick))  # this handle still writes


# -- a SQLite file that cannot be used ---------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_sqlite_store_on_a_directory_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"untouched")
    before = _tree(tmp_path)
    with pytest.raises((ConfigurationError, StoreUnavailable)) as info:
        SQLiteStore(target)
    assert str(target) in str(info.value)
    assert _tree(tmp_path) == before


def test_sqlite_store_in_a_missing_directory_fails_clearly_and_creates_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "missing" / "deeper" / "x.db"
    with pytest.raises(ConfigurationError) as info:
        SQLiteStore(target)
    assert "does not exist" in str(info.value)
    assert str(tmp_path / "missing" / "deeper") in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigurationError):
        open_store(f"sqlite:///{target}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content", [b"this is not a database\n" * 200, bytes(range(256)) * 64, b"SQLite format 3"]
)
def test_sqlite_store_on_a_non_database_file_fails_clearly_and_leaves_it_intact(
    tmp_path: Path, content: bytes
) -> None:
    target = tmp_path / "notes.db"
    target.write_bytes(content)
    before = _tree(tmp_path)
    with pytest.raises(StoreUnavailable) as info:
        SQLiteStore(target)
    assert str(target) in str(info.value)
    assert "not a database" in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)  # chained, never a bare sqlite3 error
    assert _tree(tmp_path) == before  # same bytes, and no -wal / -shm files left behind


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_sqlite_store_refuses_a_private_in_memory_database(path: str) -> None:
    with pytest.raises(ConfigurationError, match="file path"):
        SQLiteStore(path)


def test_a_sqlite_file_locked_past_the_busy_timeout_fails_closed(tmp_path: Path) -> None:
    """SPEC 17: a store that cannot be written says so (StoreUnavailable), writes nothing."""
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.1)
    done = claimed(store.claim("done", FP, 60))
    assert store.complete("done", done.token, OK, 3600, 3600)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreUnavailable) as info:
            store.claim("new", FP, 60)
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # A replay needs no write lock (WAL readers are not blocked): it still answers.
        assert existing(store.claim("done", FP, 60)).record.response == OK
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert store.get("new") is None  # nothing half-written
    assert claimed(store.claim("new", FP, 60)).token > done.token
    store.close()


def test_sqlite_purge_drops_only_records_past_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "purge.db", clock=clock)
    try:
        short = claimed(store.claim("short", FP, 60))
        long = claimed(store.claim("long", FP, 60))
        claimed(store.claim("held", FP, 60))
        assert store.complete("short", short.token, OK, 10, 10)
        assert store.complete("long", long.token, OK, 10, 1000)
        clock.advance(15)  # short: tombstone
        assert store.purge() == 0
        clock.advance(10)  # short: past retention
        assert store.purge() == 1
        assert store.get("short") is None
        assert store.get("long") is not None
        held = store.get("held")
        assert held is not None
        assert held.state is State.IN_FLIGHT  # a claim is never purged while it may be retried
        assert claimed(store.claim("short", FP, 60)).expired_before is False
    finally:
        store.close()

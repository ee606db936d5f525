"""The store contract on the server-backed stores (Redis, Redis Cluster, PostgreSQL).

The same rules as ``records.py`` (claim_on, renew_on, complete_on, release_allowed, resolve,
next_token), observed through the store API on real servers with their real clocks. Durations
are in ``kit.tick`` units; sync and async faces are checked side by side.
"""

from __future__ import annotations

import threading
import time

import pytest

from kit.wakes import HANG, NEVER, WakeProbe
from retrysafe.records import Claimed, Existing, State, StoredResponse

RESPONSE = StoredResponse(201, (("content-type", "application/json"),), b'{"id": 7}\x00\xff')


def _claimed(result: object) -> Claimed:
    assert isinstance(result, Claimed), result
    return result


def _existing(result: object) -> Existing:
    assert isinstance(result, Existing), result
    return result


def test_first_claim_then_byte_exact_replay(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert not first.expired_before
    assert not first.recovered
    assert store.complete("k", first.token, RESPONSE, 100 * t, 100 * t)
    again = _existing(store.claim("k", "other-fp", 10 * t)).record
    assert again.state is State.COMPLETED
    assert again.response == RESPONSE
    assert again.fingerprint == "fp"
    assert again.token == first.token


def test_duplicate_in_flight_sees_the_holder(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    other = bkit.reopen()  # another process's handle on the same data
    record = _existing(other.claim("k", "fp", 10 * t)).record
    assert record.state is State.IN_FLIGHT
    assert record.token == first.token
    assert record.response is None


def test_takeover_after_lapsed_lease_fences_out_the_old_holder(bkit):
    store, t = bkit.store, bkit.tick
    old = _claimed(store.claim("k", "fp", 1 * t))
    bkit.advance(1.5 * t)
    new = _claimed(store.claim("k", "fp", 10 * t))
    assert new.recovered
    assert not new.expired_before
    assert new.previous_fingerprint == "fp"
    assert new.token > old.token
    assert not store.renew("k", old.token, 10 * t)
    assert not store.complete("k", old.token, RESPONSE, 10 * t, 10 * t)
    assert not store.release("k", old.token)
    assert store.complete("k", new.token, RESPONSE, 10 * t, 10 * t)
    assert _existing(store.claim("k", "fp", t)).record.token == new.token


def test_a_different_request_never_takes_over_a_lapsed_lease(bkit):
    store, t = bkit.store, bkit.tick
    old = _claimed(store.claim("k", "fp", 1 * t))
    bkit.advance(1.5 * t)
    record = _existing(store.claim("k", "other", 10 * t)).record  # SPEC 9: a mismatch
    assert record.state is State.IN_FLIGHT
    assert record.token == old.token
    assert record.fingerprint == "fp"
    assert store.complete("k", old.token, RESPONSE, 10 * t, 10 * t)


def test_holder_keeps_a_lapsed_lease_until_someone_takes_over(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 1 * t))
    bkit.advance(1.5 * t)
    assert store.complete("k", first.token, RESPONSE, 10 * t, 10 * t)


def test_renew_extends_the_lease(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 3 * t))
    bkit.advance(1 * t)
    assert store.renew("k", first.token, 6 * t)
    bkit.advance(3 * t)  # past the first lease, inside the renewed one
    assert _existing(store.claim("k", "fp", t)).record.state is State.IN_FLIGHT


def test_release_lets_a_retry_run_as_new(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert store.release("k", first.token)
    assert store.get("k") is None
    again = _claimed(store.claim("k", "fp", 10 * t))
    assert not again.recovered
    assert not again.expired_before
    assert again.token > first.token


def test_expiry_leaves_a_tombstone_then_nothing(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert store.complete("k", first.token, RESPONSE, 2 * t, 4 * t)
    bkit.advance(2.5 * t)
    tomb = store.get("k")
    assert tomb is not None
    assert tomb.state is State.TOMBSTONE
    assert tomb.response is None  # the body is gone at the TTL
    again = _claimed(store.claim("k", "fp2", 10 * t))
    assert again.expired_before
    assert not again.recovered
    assert again.previous_fingerprint == "fp"
    assert store.complete("k", again.token, RESPONSE, 1 * t, 1 * t)
    bkit.advance(2.5 * t)  # past ttl + retention
    assert store.get("k") is None
    last = _claimed(store.claim("k", "fp3", 10 * t))
    assert not last.expired_before
    assert last.token > again.token


def test_unreplayable_keeps_the_status_only(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    big = StoredResponse(200, (("etag", "x"),), b"x" * 1000, replayable=False, trace_id="ab")
    assert store.complete("k", first.token, big, 10 * t, 10 * t)
    record = _existing(store.claim("k", "fp", t)).record
    assert record.state is State.UNREPLAYABLE
    assert record.response == StoredResponse(200, (), b"", False, "ab", None)


def test_delete_removes_whatever_state(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert store.delete("k")
    assert not store.delete("k")
    assert not store.complete("k", first.token, RESPONSE, t, t)
    assert not _claimed(store.claim("k", "fp", t)).expired_before


def _listening(store: object) -> bool:
    """Until the store's pub/sub (LISTEN) subscription is up: a message sent before it would
    be lost, and with polling off (``wakes``) the waiter would then wait for ever."""
    listener = store._listener  # type: ignore[attr-defined]
    listener.ensure_started()
    return bool(listener.ready.wait(HANG))


def test_watch_is_woken_by_a_completion_in_another_process(bkit, wakes: WakeProbe):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 100_000 * t))  # no lapse can end the wait
    other = bkit.reopen()  # another process's handle: its completion is only published
    assert _listening(store)
    thread = threading.Thread(target=store.watch, args=("k", NEVER), daemon=True)
    thread.start()
    assert wakes.wait_parked(), "the waiter never waited on the in-flight record"
    assert other.complete("k", first.token, RESPONSE, 100 * t, 100 * t)
    thread.join(HANG)
    assert not thread.is_alive(), "the published completion did not wake the waiter"
    assert wakes.woken == 1  # the notification woke it: polling is off


def test_watch_returns_at_once_when_not_in_flight_and_at_timeout_otherwise(bkit, wakes):
    store, t = bkit.store, bkit.tick
    absent = threading.Thread(target=store.watch, args=("absent", NEVER), daemon=True)
    absent.start()
    absent.join(HANG)
    assert not absent.is_alive()
    assert wakes.parked == 0  # at once: it never waited
    _claimed(store.claim("k", "fp", 100_000 * t))
    started = time.monotonic()
    store.watch("k", 0.3)
    assert time.monotonic() - started >= 0.29  # a lower bound only: load makes waits longer
    assert (wakes.parked, wakes.woken) == (1, 0)  # it waited, nothing woke it: the timeout


def test_watch_returns_when_the_lease_lapses(bkit, wakes):
    store, t = bkit.store, bkit.tick
    _claimed(store.claim("k", "fp", 3 * t))
    thread = threading.Thread(target=store.watch, args=("k", NEVER), daemon=True)
    thread.start()  # a takeover is possible once the lease lapses: stop waiting then
    thread.join(HANG)
    assert not thread.is_alive(), "the waiter outlived the lease"
    assert wakes.woken == 0  # nothing was published: the lease's end ended the wait
    assert _claimed(store.claim("k", "fp", 3 * t)).recovered


def test_concurrent_claims_from_threads_give_one_holder(bkit):
    t = bkit.tick
    stores = [bkit.store, bkit.reopen()]
    results: list[object] = []
    barrier = threading.Barrier(16)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(stores[i % 2].claim("k", "fp", 100 * t))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert sum(isinstance(r, Existing) for r in results) == 15


async def test_async_face_follows_the_same_rules(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(await store.aclaim("k", "fp", 1 * t))
    assert await store.arenew("k", first.token, 1 * t)
    assert isinstance(await store.aclaim("k", "fp", t), Existing)
    bkit.advance(1.5 * t)
    new = _claimed(await store.aclaim("k", "fp", 10 * t))
    assert new.recovered
    assert not await store.acomplete("k", first.token, RESPONSE, 10 * t, 10 * t)
    assert await store.acomplete("k", new.token, RESPONSE, 10 * t, 10 * t)
    record = await store.aget("k")
    assert record is not None
    assert record.response == RESPONSE
    await store.awatch("k", 5.0)  # completed: returns at once
    assert await store.adelete("k")
    again = _claimed(await store.aclaim("k", "fp", 10 * t))
    assert await store.arelease("k", again.token)
    assert await store.aget("k") is None


async def test_async_watch_is_woken_by_a_sync_completion(bkit, wakes: WakeProbe):
    import asyncio

    store, t = bkit.store, bkit.tick
    first = _claimed(await store.aclaim("k", "fp", 100_000 * t))
    other = bkit.reopen()
    assert await asyncio.to_thread(_listening, store)
    waiting = asyncio.create_task(store.awatch("k", NEVER))
    assert await asyncio.to_thread(wakes.wait_parked)
    assert not waiting.done()
    await asyncio.to_thread(other.complete, "k", first.token, RESPONSE, 10 * t, 10 * t)
    await asyncio.wait_for(waiting, HANG)
    assert wakes.woken == 1  # the published completion woke the task: polling is off


@pytest.mark.parametrize("replayable", [True, False])
def test_large_bodies_round_trip(bkit, replayable):
    store, t = bkit.store, bkit.tick
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert store.complete("k", first.token, StoredResponse(200, (), body, replayable), t * 10, t)
    record = _existing(store.claim("k", "fp", t)).record
    assert record.response is not None
    assert record.response.body == (body if replayable else b"")

"""The store contract on the server-backed stores (Redis, Redis Cluster, PostgreSQL).

The same rules as ``records.py`` (claim_on, renew_on, complete_on, release_allowed, resolve,
next_token), observed through the store API on real servers with their real clocks. Durations
are in ``kit.tick`` units; sync and async faces are checked side by side.
"""

from __future__ import annotations

import threading
import time

import pytest

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


def test_watch_is_woken_by_a_completion_in_another_process(bkit):
    store, t = bkit.store, bkit.tick
    first = _claimed(store.claim("k", "fp", 100 * t))
    other = bkit.reopen()
    store.watch("k", 0.05)  # start the listener; the record is in flight, so this times out
    woken = threading.Event()
    finished_at: list[float] = []

    def waiter() -> None:
        store.watch("k", 10.0)
        finished_at.append(time.monotonic())
        woken.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.6)  # long enough that the poll interval has grown to its maximum
    assert not woken.is_set()
    completed_at = time.monotonic()
    assert other.complete("k", first.token, RESPONSE, 100 * t, 100 * t)
    assert woken.wait(5.0)
    thread.join()
    # Polling alone would see it up to 0.25 s later; the notification is much quicker.
    assert finished_at[0] - completed_at < 0.15


def test_watch_returns_at_once_when_not_in_flight_and_at_timeout_otherwise(bkit):
    store, t = bkit.store, bkit.tick
    started = time.monotonic()
    store.watch("absent", 5.0)
    assert time.monotonic() - started < 1.0
    _claimed(store.claim("k", "fp", 100 * t))
    started = time.monotonic()
    store.watch("k", 0.3)
    assert 0.25 <= time.monotonic() - started < 2.0


def test_watch_returns_when_the_lease_lapses(bkit):
    store, t = bkit.store, bkit.tick
    _claimed(store.claim("k", "fp", 3 * t))
    started = time.monotonic()
    store.watch("k", 10.0)  # a takeover is possible once the lease lapses: stop waiting then
    assert time.monotonic() - started < 3 * t + 1.0
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


async def test_async_watch_is_woken_by_a_sync_completion(bkit):
    import asyncio

    store, t = bkit.store, bkit.tick
    first = _claimed(await store.aclaim("k", "fp", 100 * t))
    waiting = asyncio.create_task(store.awatch("k", 10.0))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    other = bkit.reopen()
    await asyncio.to_thread(other.complete, "k", first.token, RESPONSE, 10 * t, 10 * t)
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("replayable", [True, False])
def test_large_bodies_round_trip(bkit, replayable):
    store, t = bkit.store, bkit.tick
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    first = _claimed(store.claim("k", "fp", 10 * t))
    assert store.complete("k", first.token, StoredResponse(200, (), body, replayable), t * 10, t)
    record = _existing(store.claim("k", "fp", t)).record
    assert record.response is not None
    assert record.response.body == (body if replayable else b"")

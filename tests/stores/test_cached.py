"""The local replay cache (``stores/cached.py``) over every store kind.

The store contract and the model test already run through the cache (``kit_fixture`` in
those modules); these tests pin what is particular to it: which answers it gives without a
round trip, that the store still has the last word on expiry (SPEC 14), its bounds, deletes,
threads and tasks racing completions, and two processes sharing one store.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kit.store_child import complete_through_cache, replay_through_cache, response_for
from kit.store_claims import FP, OK, OTHER_FP, claimed, existing, new_id
from kit.stores import (
    CACHED_KINDS,
    FAR,
    REDIS_URL,
    FakeClock,
    StoreKit,
    kit_fixture,
    require_service,
    rerun_when_stalled,
    server_down,
)
from retrysafe import open_store
from retrysafe._decide import Refuse, Replay, decide
from retrysafe._engine import claim_decision
from retrysafe._outcomes import Outcome
from retrysafe._policy import Policy
from retrysafe._records import CACHE_HIT, Claimed, ClaimResult, Existing, State, StoredResponse
from retrysafe.errors import ConfigurationError
from retrysafe.stores._replay_cache import MARGIN_S, entry_size
from retrysafe.stores.cached import CachedStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.testing import RecordingStore

kit = kit_fixture(sorted(CACHED_KINDS))


def cached(kit: StoreKit) -> CachedStore:
    assert isinstance(kit.store, CachedStore)
    return kit.store


def counting(kit: StoreKit, max_records: int = 100) -> tuple[CachedStore, RecordingStore]:
    """A cache over a counting wrapper of the kit's store: the tally is store round trips."""
    recording = RecordingStore(cached(kit).inner)
    return CachedStore(recording, max_records, clock=kit.clock), recording


def complete_one(store: Any, id: str, response: StoredResponse = OK, ttl: float = FAR) -> int:
    """Claim and complete ``id``; the lease, the retention and by default the TTL are FAR
    (seconds here: long on any clock)."""
    c = claimed(store.claim(id, FP, FAR))
    assert store.complete(id, c.token, response, ttl, FAR)
    return c.token


# -- what the cache answers -------------------------------------------------------------------


def test_replays_after_a_completion_cost_no_round_trip(kit: StoreKit) -> None:
    store, recording = counting(kit)
    id = new_id()
    token = complete_one(store, id)
    recording.reset()
    for fingerprint in (FP, FP, OTHER_FP):
        e = existing(store.claim(id, fingerprint, FAR * kit.tick))
        assert e.cached
        assert (e.record.state, e.record.token, e.record.fingerprint) == (
            State.COMPLETED,
            token,
            FP,
        )
        assert e.record.response == OK
    assert recording.reset().round_trips == 0
    # decide() answers a cached record as it answers the store's: replay, or 422 (SPEC 9)
    policy = Policy()
    assert isinstance(decide(store.claim(id, FP, 1.0), FP, 0.0, policy), Replay)
    refused = decide(store.claim(id, OTHER_FP, 1.0), OTHER_FP, 0.0, policy)
    assert isinstance(refused, Refuse)
    assert refused.outcome is Outcome.MISMATCH
    # and the engine reports the claim as a cache hit, not as store latency
    timed: list[str] = []
    decision = claim_decision(store, id, FP, policy, lambda name, _: timed.append(name))
    assert isinstance(decision, Replay)
    assert timed == [CACHE_HIT]
    assert recording.reset().round_trips == 0
    assert store.get(id) is not None  # admin reads still go to the store
    assert recording.reset().calls["get"] == 1


async def test_async_face_caches_the_same_way(kit: StoreKit) -> None:
    store, recording = counting(kit)
    id = new_id()
    c = claimed(await store.aclaim(id, FP, FAR * kit.tick))
    assert await store.acomplete(id, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    recording.reset()
    answers = [await store.aclaim(id, FP, FAR * kit.tick) for _ in range(3)]
    assert all(isinstance(a, Existing) and a.cached and a.record.response == OK for a in answers)
    assert recording.reset().round_trips == 0
    assert await store.adelete(id)
    assert isinstance(await store.aclaim(id, FP, FAR * kit.tick), Claimed)


def test_a_record_completed_elsewhere_is_cached_on_its_first_replay(kit: StoreKit) -> None:
    store, recording = counting(kit)
    id = new_id()
    token = complete_one(kit.reopen(), id)  # another process completed it
    first = existing(store.claim(id, FP, FAR * kit.tick))
    assert not first.cached
    assert first.now is not None  # the store said when it answered
    again = existing(store.claim(id, FP, FAR * kit.tick))
    assert again.cached
    assert again.record == first.record  # exactly the store's record
    assert again.record.token == token
    assert recording.reset().calls["claim"] == 1


def test_in_flight_and_unreplayable_records_are_never_cached(kit: StoreKit) -> None:
    store, recording = counting(kit)
    busy, streamed = new_id("busy"), new_id("streamed")
    c = claimed(store.claim(busy, FP, FAR * kit.tick))
    assert existing(store.claim(busy, FP, FAR * kit.tick)).record.state is State.IN_FLIGHT
    unreplayable = StoredResponse(200, (), b"", replayable=False)
    complete_one(store, streamed, unreplayable)
    recording.reset()
    for id in (busy, streamed, busy, streamed):
        assert not existing(store.claim(id, FP, FAR * kit.tick)).cached
    assert recording.reset().calls["claim"] == 4
    assert len(store.cache) == 0
    # the held claim completes normally afterwards, and is cached then
    assert store.complete(busy, c.token, OK, FAR * kit.tick, FAR * kit.tick)
    assert existing(store.claim(busy, FP, FAR * kit.tick)).cached


# -- expiry: the store has the last word --------------------------------------------------------


@rerun_when_stalled
def test_past_the_ttl_the_store_answers_expired_not_a_stale_replay(kit: StoreKit) -> None:
    store, recording = counting(kit)
    id = new_id()
    with kit.within(1.5):  # from before the completion to after the replay
        complete_one(store, id, ttl=1.5 * kit.tick)
        kit.advance(1 * kit.tick)  # half a tick before the TTL
        before = existing(store.claim(id, FP, FAR * kit.tick))
    assert before.record.response == OK  # cached or, near the deadline, the store: a replay
    if not kit.real_clock:
        assert before.cached
    kit.advance(1 * kit.tick)  # half a tick past the TTL
    recording.reset()
    after = claimed(store.claim(id, FP, FAR * kit.tick))
    assert after.expired_before  # the store's distinct "expired" signal (SPEC 14)
    assert recording.reset().calls["claim"] == 1
    assert len(store.cache) == 0


class _Silent:
    """A store that does not say when it answered (``Existing.now`` left None)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner, self.url = inner, inner.url

    def claim(self, id: str, fingerprint: str, lease: float) -> ClaimResult:
        result = self.inner.claim(id, fingerprint, lease)
        return Existing(result.record) if isinstance(result, Existing) else result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("skew", [-1000.0, 0.0, 1000.0])
def test_a_claimed_record_lapses_locally_before_the_store_whatever_the_clock_skew(
    skew: float,
) -> None:
    # The store's clock is `skew` seconds off the local one: the deadline is measured from the
    # store's own "now" and "expires_at", so the entry still lapses just before the store's TTL.
    local = FakeClock()
    store_clock = FakeClock(local() + skew)
    backing = MemoryStore(clock=store_clock)
    store = CachedStore(backing, 10, clock=local)

    def advance(seconds: float) -> None:
        local.advance(seconds)
        store_clock.advance(seconds)

    complete_one(backing, "a", ttl=10.0)  # completed by someone else: no local entry yet
    assert not existing(store.claim("a", FP, 1.0)).cached
    advance(9.0)
    assert existing(store.claim("a", FP, 1.0)).cached
    advance(1.0 - MARGIN_S / 2)  # inside the safety margin: the store answers, still live
    inside = existing(store.claim("a", FP, 1.0))
    assert not inside.cached
    assert inside.record.response == OK
    advance(MARGIN_S)  # past the TTL
    assert claimed(store.claim("a", FP, 1.0)).expired_before
    # a store that does not say when it answered is never cached from a claim
    silent = CachedStore(_Silent(backing), 10, clock=local)  # type: ignore[arg-type]
    complete_one(backing, "b", ttl=10.0)
    for _ in range(2):
        assert not existing(silent.claim("b", FP, 1.0)).cached


# -- bounds -----------------------------------------------------------------------------------


def test_lru_bound_by_count_keeps_the_most_recently_used(tmp_path: Path) -> None:
    store = CachedStore(MemoryStore(), max_records=2)
    for id in ("a", "b"):
        complete_one(store, id)
    assert existing(store.claim("a", FP, 1.0)).cached  # "a" is now the most recent
    complete_one(store, "c")  # evicts "b", the least recently used
    assert len(store.cache) == 2
    assert existing(store.claim("a", FP, 1.0)).cached
    assert existing(store.claim("c", FP, 1.0)).cached
    evicted = existing(store.claim("b", FP, 1.0))
    assert not evicted.cached  # from the store, and now cached again in place of "a"
    assert evicted.record.response == OK
    assert existing(store.claim("b", FP, 1.0)).cached
    assert not existing(store.claim("a", FP, 1.0)).cached


def test_lru_bound_by_bytes(tmp_path: Path) -> None:
    def response(n: int) -> StoredResponse:
        return StoredResponse(200, (("content-type", "x/y"),), bytes(n))

    size = entry_size(response(100))
    store = CachedStore(MemoryStore(), max_records=100, max_bytes=2 * size + size // 2)
    for id in ("a", "b", "c"):
        complete_one(store, id, response(100))
    assert len(store.cache) == 2  # the third pushed "a" out
    assert store.cache.size == 2 * size <= store.cache.max_bytes
    assert not existing(store.claim("a", FP, 1.0)).cached
    complete_one(store, "huge", response(10 * size))  # larger than the whole cache
    assert not existing(store.claim("huge", FP, 1.0)).cached
    assert store.cache.size <= store.cache.max_bytes
    with pytest.raises(ConfigurationError, match="bounds"):
        CachedStore(MemoryStore(), max_records=0)


# -- deletes, releases, fencing ----------------------------------------------------------------


def test_delete_through_the_cache_drops_the_entry(kit: StoreKit) -> None:
    store = cached(kit)
    id = new_id()
    complete_one(store, id)
    assert existing(store.claim(id, FP, FAR * kit.tick)).cached
    assert store.delete(id)
    fresh = claimed(store.claim(id, FP, FAR * kit.tick))
    assert (fresh.expired_before, fresh.recovered) == (False, False)


def test_a_delete_from_another_process_leaves_a_stale_entry_until_its_deadline() -> None:
    # The documented caveat (docs/stores.md): this process cannot see another's delete.
    clock = FakeClock()
    backing = MemoryStore(clock=clock)
    store = CachedStore(backing, 10, clock=clock)
    complete_one(store, "a", ttl=10.0)
    assert backing.delete("a")  # not through the wrapper
    assert existing(store.claim("a", FP, 1.0)).cached  # stale, but the same stored response
    clock.advance(10.0)
    assert claimed(store.claim("a", FP, 1.0))  # past the deadline the store answers


def test_released_and_fenced_out_claims_are_not_cached(kit: StoreKit) -> None:
    store = cached(kit)
    released, fenced = new_id("released"), new_id("fenced")
    c = claimed(store.claim(released, FP, FAR * kit.tick))
    assert store.release(released, c.token)
    assert claimed(store.claim(released, FP, FAR * kit.tick))
    old = claimed(store.claim(fenced, FP, 1.5 * kit.tick))
    kit.advance(2 * kit.tick)  # the lease lapses; another process takes over (a lower bound)
    other = kit.reopen()
    assert claimed(other.claim(fenced, FP, FAR * kit.tick)).recovered
    assert not store.complete(fenced, old.token, OK, FAR * kit.tick, FAR * kit.tick)
    answer = existing(store.claim(fenced, FP, FAR * kit.tick))
    assert (answer.cached, answer.record.state) == (False, State.IN_FLIGHT)


# -- concurrency ------------------------------------------------------------------------------

IDS = 24


def test_threads_replay_while_completions_land(kit: StoreKit) -> None:
    store = cached(kit)
    ids = [new_id(f"t{i}") for i in range(IDS)]
    tokens = {id: claimed(store.claim(id, FP, FAR * kit.tick)).token for id in ids}
    bad: list[str] = []
    seen_done: list[set[str]] = [set() for _ in range(4)]
    start = threading.Barrier(6)
    deadline = time.monotonic() + 60

    def reader(mine: set[str]) -> None:
        start.wait()
        while len(mine) < IDS and time.monotonic() < deadline:
            for id in ids:
                record = existing(store.claim(id, FP, FAR * kit.tick)).record
                if record.token != tokens[id]:
                    bad.append(f"{id}: token {record.token}")
                elif record.state is State.COMPLETED:
                    if record.response != response_for(id):
                        bad.append(f"{id}: another response")
                    mine.add(id)
                elif record.state is not State.IN_FLIGHT:
                    bad.append(f"{id}: {record.state}")

    def writer(half: list[str]) -> None:
        start.wait()
        for id in half:
            assert store.complete(id, tokens[id], response_for(id), FAR * kit.tick, FAR * kit.tick)

    threads = [threading.Thread(target=reader, args=(mine,)) for mine in seen_done]
    threads += [threading.Thread(target=writer, args=(ids[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not bad, bad[:5]
    assert all(len(mine) == IDS for mine in seen_done), [len(m) for m in seen_done]
    assert len(store.cache) == IDS
    assert store.cache.hits > 0


async def test_tasks_replay_while_completions_land(kit: StoreKit) -> None:
    store = cached(kit)
    ids = [new_id(f"a{i}") for i in range(IDS)]
    tokens = {}
    for id in ids:
        tokens[id] = claimed(await store.aclaim(id, FP, FAR * kit.tick)).token
    bad: list[str] = []

    async def reader() -> int:
        done: set[str] = set()
        for _ in range(10_000):
            for id in ids:
                record = existing(await store.aclaim(id, FP, FAR * kit.tick)).record
                if record.token != tokens[id] or record.state not in (
                    State.IN_FLIGHT,
                    State.COMPLETED,
                ):
                    bad.append(f"{id}: {record.state} {record.token}")
                elif record.state is State.COMPLETED:
                    if record.response != response_for(id):
                        bad.append(f"{id}: another response")
                    done.add(id)
            if len(done) == IDS:
                return len(done)
            await asyncio.sleep(0)
        return len(done)

    async def writer(half: list[str]) -> None:
        for id in half:
            ok = await store.acomplete(
                id, tokens[id], response_for(id), FAR * kit.tick, FAR * kit.tick
            )
            assert ok
            await asyncio.sleep(0)

    results = await asyncio.gather(
        *(reader() for _ in range(4)), writer(ids[::2]), writer(ids[1::2])
    )
    assert not bad, bad[:5]
    assert results[:4] == [IDS] * 4
    assert len(store.cache) == IDS


# -- two processes on one store ----------------------------------------------------------------


def _two_processes(url: str) -> None:
    id = new_id("shared")
    ctx = multiprocessing.get_context("spawn")
    for target, args in (
        (complete_through_cache, (url, id)),
        (replay_through_cache, (url, id, 3)),
    ):
        ours, theirs = ctx.Pipe()
        child = ctx.Process(target=target, args=(*args, theirs))
        child.start()
        try:
            assert ours.poll(60), "the child process did not answer"
            answer = ours.recv()
        finally:
            child.join(timeout=60)
        assert child.exitcode == 0
    assert answer == (
        [("completed", False, True), ("completed", True, True), ("completed", True, True)],
        1,  # B's first replay reached the store; the next two came from B's cache
    )


def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    _two_processes(f"sqlite:///{path}?local_cache=100")


def test_two_processes_on_one_redis() -> None:
    if why := server_down(REDIS_URL):
        require_service("Redis", why)
    import redis

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    try:
        _two_processes(f"{REDIS_URL}?prefix={prefix}&local_cache=100")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


# -- open_store ------------------------------------------------------------------------------


def test_open_store_turns_the_cache_on_with_a_url_option(tmp_path: Path) -> None:
    plain = open_store("memory://")
    assert not isinstance(plain, CachedStore)
    store = open_store("memory://?local_cache=5&local_cache_bytes=4096")
    assert isinstance(store, CachedStore)
    assert isinstance(store.inner, MemoryStore)
    assert (store.cache.max_records, store.cache.max_bytes) == (5, 4096)
    assert store.url == "memory://?local_cache=5&local_cache_bytes=4096"
    path = tmp_path / "abs.db"
    on_file = open_store(f"sqlite:///{path}?local_cache=3")
    try:
        assert isinstance(on_file, CachedStore)
        assert isinstance(on_file.inner, SQLiteStore)
        assert Path(on_file.inner.path) == path  # the absolute path survived the option
        assert on_file.purge(10) == 0  # the wrapped store's extras are reachable
    finally:
        on_file.close()
    for bad in ("memory://?local_cache=lots", "memory://?local_cache_bytes=10"):
        with pytest.raises(ConfigurationError, match="local_cache"):
            open_store(bad)

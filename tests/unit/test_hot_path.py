"""The shortcuts the request hot path takes give the same answers as the long way round.

- raw ASGI headers read lazily (``RawHeaders``) look the same as decoded ones to a scope or
  fingerprint function, to key-header lookup and to Content-Length;
- the claim fast path (``claim_decision``) still waits through the one claim loop;
- all async heartbeats of a loop share one timer, each still beating at its own period;
- the memory store keeps one deadline entry per record and still drops it in time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from typing import Any

import pytest

from kit.stores import FakeClock
from kit.wakes import HANG
from retrysafe._decide import Execute, Replay
from retrysafe._engine import (
    AsyncHeartbeat,
    Heartbeat,
    _scheduler,
    aclaim_decision,
    claim_decision,
)
from retrysafe._fingerprint import RawHeaders, RequestFacts, bytes_fingerprint
from retrysafe._policy import Policy
from retrysafe._records import Claimed, ClaimResult, Record, StoredResponse
from retrysafe._scopes import authorization_scope
from retrysafe.http._exchange import InvalidLength, KeyHeaders, declared_length
from retrysafe.http._wsgi import EnvironHeaders
from retrysafe.stores.memory import MemoryStore

RAW = [
    (b"host", b"example"),
    (b"Authorization", b"Bearer first"),
    (b"authorization", b"Bearer second"),
    (b"content-length", b" 12 "),
    (b"idempotency-key", b"k-\xe9"),
]
DECODED = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in RAW]


def test_raw_headers_read_like_decoded_ones() -> None:
    raw = RawHeaders(RAW)
    assert list(raw) == DECODED
    assert len(raw) == len(DECODED)
    assert raw[1] == DECODED[1]
    assert list(raw[1:3]) == DECODED[1:3]
    lazy = RequestFacts("POST", "/x", "", raw, b"{}")
    eager = RequestFacts("POST", "/x", "", tuple(DECODED), b"{}")
    for name in ("authorization", "AUTHORIZATION", "Idempotency-Key", "x-missing"):
        assert lazy.header(name) == eager.header(name)
    assert lazy.header("authorization") == "Bearer first"  # first line wins, any case
    assert authorization_scope(lazy) == authorization_scope(eager)
    assert bytes_fingerprint(lazy) == bytes_fingerprint(eager)


def test_key_headers_and_content_length_agree_on_raw_and_decoded_headers() -> None:
    policy = Policy(header_names=("Idempotency-Key", "X-Idempotency-Key"))
    keys = KeyHeaders(policy)
    raw = [*RAW, (b"X-Idempotency-Key", b"other"), (b"idempotency-key", b"again")]
    decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    assert keys.values(RawHeaders(raw)) == keys.values(decoded) == [["k-é", "again"], ["other"]]
    assert declared_length(RawHeaders(raw)) == declared_length(decoded) == 12
    for invalid in (b"-1", b"12abc", b"\xb2", b"1, 1", b""):  # "\xb2" is "²": isdigit() says yes
        with pytest.raises(InvalidLength, match="Content-Length"):
            declared_length(RawHeaders([(b"content-length", invalid)]))


def test_environ_headers_read_like_the_listed_environ() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "HTTP_IDEMPOTENCY_KEY": "k-1",
        "HTTP_AUTHORIZATION": "Bearer x",
        "HTTP_X_EMPTY": "",
        "CONTENT_LENGTH": "12",
        "CONTENT_TYPE": "",  # CGI's "not sent"
    }
    headers = EnvironHeaders(environ)
    listed = [
        ("idempotency-key", "k-1"),
        ("authorization", "Bearer x"),
        ("x-empty", ""),
        ("content-length", "12"),
    ]
    assert list(headers) == listed
    assert len(headers) == 4
    assert headers[0] == listed[0]
    for name, value in listed:
        assert headers.first(name) == value
        assert headers.lines(name) == [value]
    assert headers.first("content-type") is None  # empty CONTENT_TYPE: not sent
    assert headers.lines("x-missing") == []
    assert headers.first("x_empty") is None  # no environ key yields a name with "_"
    assert headers.first("Authorization") is None  # names are asked for in lowercase
    facts = RequestFacts("POST", "/x", "", headers, b"")
    assert authorization_scope(facts) == authorization_scope(facts._replace(headers=listed))
    assert KeyHeaders(Policy()).values(headers) == [["k-1"]]
    assert declared_length(headers) == 12
    assert RawHeaders(RAW).lines("x-missing") == []


def test_claim_fast_path_waits_for_an_in_flight_first_attempt() -> None:
    store = MemoryStore()
    policy = Policy(wait=5)
    first = claim_decision(store, "id-1", "fp", policy)
    assert isinstance(first, Execute)
    response = StoredResponse(201, (), b"done")

    def finish() -> None:
        store.complete("id-1", first.token, response, 60, 60)

    timer = threading.Timer(0.05, finish)
    timer.start()
    try:
        second = claim_decision(store, "id-1", "fp", policy)  # waits, then replays
    finally:
        timer.join()
    assert isinstance(second, Replay)
    assert second.response == response


async def test_async_claim_fast_path_waits_too() -> None:
    store = MemoryStore()
    policy = Policy(wait=5)
    first = await aclaim_decision(store, "id-2", "fp", policy)
    assert isinstance(first, Execute)
    response = StoredResponse(201, (), b"done")
    asyncio.get_running_loop().call_later(
        0.05, lambda: store.complete("id-2", first.token, response, 60, 60)
    )
    second = await aclaim_decision(store, "id-2", "fp", policy)
    assert isinstance(second, Replay)


class _CountingStore(MemoryStore):
    def __init__(self, wanted: tuple[str, int] = ("", 0)) -> None:
        super().__init__()
        self.renewals: dict[str, int] = {}
        self.wanted = wanted
        self.reached = asyncio.Event()  # set once wanted[0] has been renewed wanted[1] times

    async def arenew(self, id: str, token: int, lease: float) -> bool:
        self.renewals[id] = self.renewals.get(id, 0) + 1
        if (id, self.renewals[id]) == self.wanted:
            self.reached.set()
        return await super().arenew(id, token, lease)


def _claim_each(store: MemoryStore, **policies: Policy) -> dict[str, int]:
    """Claim one id per keyword (with that policy's lease); the tokens by id."""
    tokens = {}
    for id, policy in policies.items():
        claimed: ClaimResult = store.claim(id, "fp", policy.lease_s)
        assert isinstance(claimed, Claimed)
        tokens[id] = claimed.token
    return tokens


# Periods far apart, so that counting beats says which timer fired without timing anything:
# by the time the fast claim has beaten BEATS times the slow one, due only after SLOW_PERIOD,
# must not have beaten at all (a shared timer that beat everything at once would have).
BEATS = 5
FAST = Policy(lease=0.3, heartbeat=0.02)
SLOW = Policy(lease=60.0, heartbeat=20.0)  # its first beat is due long after BEATS fast ones


async def test_heartbeats_of_one_loop_share_a_timer_yet_keep_their_own_periods() -> None:
    store = _CountingStore(wanted=("fast", BEATS))
    tokens = _claim_each(store, fast=FAST, slow=SLOW, done=FAST)
    finished = AsyncHeartbeat(store, "done", tokens["done"], FAST).begin()
    await finished.end()  # a handler that finished at once never beats
    async with (
        AsyncHeartbeat(store, "fast", tokens["fast"], FAST),
        AsyncHeartbeat(store, "slow", tokens["slow"], SLOW),
    ):
        await asyncio.wait_for(store.reached.wait(), HANG)
        assert store.renewals.get("slow", 0) == 0  # its own period, not the fast one's
    assert store.renewals.get("done", 0) == 0
    record = store.get("fast")
    assert isinstance(record, Record)
    assert record.lease_until > store._clock()  # still held: the beats kept it alive


class _CountingSyncStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.renewals: dict[str, int] = {}
        self._counted = threading.Condition()

    def renew(self, id: str, token: int, lease: float) -> bool:
        with self._counted:
            self.renewals[id] = self.renewals.get(id, 0) + 1
            self._counted.notify_all()
        return super().renew(id, token, lease)

    def wait_renewed(self, id: str, count: int) -> bool:
        with self._counted:
            return self._counted.wait_for(lambda: self.renewals.get(id, 0) >= count, HANG)


def test_sync_heartbeats_share_a_thread_keep_their_periods_and_leave_nothing_behind() -> None:
    store = _CountingSyncStore()
    tokens = _claim_each(store, fast=FAST, slow=SLOW, done=FAST)
    with Heartbeat(store, "done", tokens["done"], FAST):
        pass  # a handler that finished at once never beats
    with (
        Heartbeat(store, "fast", tokens["fast"], FAST),
        Heartbeat(store, "slow", tokens["slow"], SLOW),
    ):
        assert store.wait_renewed("fast", BEATS), store.renewals
        assert store.renewals.get("slow", 0) == 0  # its own period, not the fast one's
    assert store.renewals.get("done", 0) == 0
    record = store.get("fast")
    assert isinstance(record, Record)
    assert record.lease_until > store._clock()  # still held: the beats kept it alive
    after = dict(store.renewals)
    threading.Event().wait(0.1)  # finished handlers are beaten no more, and nothing is kept
    assert store.renewals == after
    assert not any(beat._store is store for beat in _scheduler._due)


def _beats_in_child(parent_thread_ran: bool, results: Any) -> None:
    store = _CountingSyncStore()
    policy = Policy(lease=0.3, heartbeat=0.04)
    claimed = store.claim("child", "fp", policy.lease_s)
    assert isinstance(claimed, Claimed)
    with Heartbeat(store, "child", claimed.token, policy):
        store.wait_renewed("child", 3)  # beats come, or HANG passes and the count says so
    results.put((parent_thread_ran, store.renewals.get("child", 0)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_renews_with_a_heartbeat_thread_of_its_own() -> None:
    store = MemoryStore()
    policy = Policy(lease=0.3, heartbeat=0.04)
    claimed = store.claim("parent", "fp", policy.lease_s)
    assert isinstance(claimed, Claimed)
    with Heartbeat(store, "parent", claimed.token, policy):  # the parent's thread now runs
        ran = _scheduler._thread is not None
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_beats_in_child, args=(ran, results))
        child.start()
        try:
            parent_ran, renewals = results.get(timeout=2 * HANG)
            child.join(timeout=10)
        finally:
            if child.is_alive():
                child.kill()
    assert child.exitcode == 0
    assert parent_ran
    assert renewals >= 3  # the child's own thread beat


def test_memory_store_keeps_one_deadline_entry_per_record_and_still_expires_it() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    ttl, retention = 10_000.0, 100.0  # the TTL ends after the claim's abandonment deadline
    for i in range(10):
        claimed = store.claim(f"r-{i}", "fp", 30)
        assert isinstance(claimed, Claimed)
        assert store.complete(f"r-{i}", claimed.token, StoredResponse(201), ttl, retention)
    assert len(store._deadlines) == 10  # the claim's entry serves the completed record too
    clock.advance(4000)  # the claim entries fall due: the records live on, re-filed at the TTL
    for _ in range(3):
        store.claim("poke", "fp", 30)
    record = store.get("r-0")
    assert record is not None
    assert record.response == StoredResponse(201)
    clock.advance(ttl + retention)  # past TTL and retention of all of them
    for _ in range(10):  # the sweep is lazy: a few records per operation
        store.claim("poke", "fp", 30)
    assert store.get("r-0") is None
    assert len(store) == 1  # only "poke" is left

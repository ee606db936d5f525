"""What only the Redis store has: self-expiring keys, one hash tag per record, scripts that
survive a SCRIPT FLUSH, publishing only for watched records, and its key layout (a record
string, a response that names its token, older layouts ignored)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from kit.store_servers import REDIS_URL, RedisServer, redis_available, require, shared_down
from kit.wakes import HANG
from retrysafe._records import Claimed, Existing, StoredResponse
from retrysafe.errors import ConfigurationError, StoreError, StoreUnavailable
from retrysafe.stores.redis import RedisStore

OK = StoredResponse(200, (("content-type", "text/plain"),), b"ok")


@pytest.fixture
def store() -> Iterator[RedisStore]:
    require("Redis", shared_down(REDIS_URL))
    made = RedisStore(REDIS_URL, prefix=f"r{uuid.uuid4().hex[:10]}:")
    yield made
    made.drop_keys()
    made.close()


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _counted_down_from(set_ms: int, since: float, pttl: int) -> bool:
    """``pttl`` is what a key set to live ``set_ms`` ms at or after ``since`` (monotonic) has
    left now: it counted down by at most the real time since then, however long a loaded
    machine took between the write and the read."""
    return set_ms - (time.monotonic() - since) * 1000 - 1 <= pttl <= set_ms


def test_records_expire_by_themselves(store, raw):
    record_key, body_key = store._keys("k")
    claiming = time.monotonic()
    claimed = store.claim("k", "fp", 30)
    assert isinstance(claimed, Claimed)
    # In flight: kept for the lease plus the abandoned-claim grace, then gone by itself.
    # (Each key lives a millisecond past the time it stands for: see _redis_lua.ms.)
    assert _counted_down_from(3630_001, claiming, raw.pttl(record_key))
    completing = time.monotonic()
    assert store.complete("k", claimed.token, OK, 100, 1000)
    # ttl + retention: the tombstone; the body goes at the TTL
    assert _counted_down_from(1100_001, completing, raw.pttl(record_key))
    assert _counted_down_from(100_001, completing, raw.pttl(body_key))


def test_the_body_key_expires_first_leaving_a_tombstone(store, raw):
    claimed = store.claim("k", "fp", 30)
    assert isinstance(claimed, Claimed)
    assert store.complete("k", claimed.token, OK, 0.2, 3600)  # a tombstone no test outlives
    time.sleep(0.3)
    record_key, body_key = store._keys("k")
    assert raw.exists(body_key) == 0
    assert raw.get(record_key).endswith(b",fp")  # the tombstone keeps the fingerprint
    again = store.claim("k", "fp", 30)
    assert isinstance(again, Claimed)
    assert again.expired_before


def test_both_keys_of_a_record_share_one_cluster_slot(store):
    # The contract tests run on a real cluster too, where a cross-slot script would fail.
    for id in ["k", "a" * 64, "with}brace", "x{y"]:
        slots = {key_slot(key.encode()) for key in store._keys(id)}
        assert len(slots) == 1, id
    assert key_slot(store._keys("a")[0].encode()) != key_slot(store._keys("b")[0].encode())


def test_scripts_are_reloaded_after_a_script_flush(store, raw):
    assert isinstance(store.claim("k", "fp", 30), Claimed)
    raw.script_flush()
    assert isinstance(store.claim("k", "fp", 30), Existing)  # NOSCRIPT -> load -> EVALSHA


def test_completion_publishes_only_for_watched_records(store, raw):
    pubsub = raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(store.channel)
    quiet = store.claim("quiet", "fp", 30)
    assert isinstance(quiet, Claimed)
    assert store.complete("quiet", quiet.token, OK, 30, 30)
    watched = store.claim("watched", "fp", 30)
    assert isinstance(watched, Claimed)
    store.watch("watched", 0.05)  # marks it watched
    assert store.complete("watched", watched.token, OK, 30, 30)
    messages = []
    deadline = time.monotonic() + HANG  # the loop ends at the first message
    while time.monotonic() < deadline and not messages:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            messages.append(message["data"])
    assert messages == [store._keys("watched")[0].encode()]
    pubsub.close()


def test_a_response_left_by_another_claim_is_never_replayed(store, raw):
    """A claim does not delete the key's old response (one call fewer): the response names
    the token it was stored under, and only the record's own token's response is answered."""
    claimed = store.claim("k", "fp", 30)
    assert isinstance(claimed, Claimed)
    assert store.complete("k", claimed.token, OK, 30, 30)
    record_key, _ = store._keys("k")
    state, rest = raw.get(record_key)[:1], raw.get(record_key)[1:]
    ex, ru, tok, tail = rest.split(b",", 3)
    assert int(tok) == claimed.token
    # The record as a later claim of the key would have left it, the response still older.
    raw.set(record_key, b",".join([state + ex, ru, str(claimed.token + 1).encode(), tail]))
    with pytest.raises(StoreError, match="missing before its TTL"):
        store.get("k")
    with pytest.raises(StoreError, match="noeviction"):
        store.claim("k", "fp", 30)


def test_an_evicted_response_is_an_error_not_an_empty_replay(store, raw):
    claimed = store.claim("k", "fp", 30)
    assert isinstance(claimed, Claimed)
    assert store.complete("k", claimed.token, OK, 30, 30)
    raw.delete(store._keys("k")[1])  # what an eviction policy other than noeviction may do
    with pytest.raises(StoreError, match="noeviction"):
        store.get("k")


def test_keys_of_the_older_hash_layout_are_ignored(store, raw):
    """Layout v1 kept a record as a hash at ``<prefix>{id}``; the store never reads it, so
    an upgraded application starts from empty records (docs/stores.md, "Upgrading")."""
    old = f"{store.prefix}{{k}}"
    raw.hset(old, mapping={"fp": "fp", "st": "completed", "tok": 1, "ex": 2**52, "ru": 2**52})
    claimed = store.claim("k", "fp", 30)
    assert isinstance(claimed, Claimed)
    assert not claimed.expired_before
    assert raw.hget(old, "st") == b"completed"  # untouched
    raw.delete(old)


def test_drop_keys_deletes_the_prefix_and_nothing_else(raw):
    # "[a]" in the prefix is a glob class: unescaped, SCAN MATCH would take the neighbour's
    # prefix "...a:" for ours and delete its keys.
    tag = uuid.uuid4().hex[:10]
    ours = RedisStore(REDIS_URL, prefix=f"d{tag}[a]:")
    neighbour = RedisStore(REDIS_URL, prefix=f"d{tag}a:")
    try:
        for store in (ours, neighbour):
            for id in ("done", "held"):
                assert isinstance(store.claim(id, "fp", 30), Claimed)
            assert store.complete("done", claimed_token(store, "done"), OK, 100, 100)
        old = f"{ours.prefix}{{k}}"  # a key of the older layout goes too
        raw.hset(old, mapping={"st": "completed"})
        # ours: a record and its response ("done"), a record in flight ("held"), the old key
        assert ours.drop_keys() == 4
        assert (ours.get("done"), ours.get("held")) == (None, None)
        assert raw.exists(old) == 0
        assert neighbour.get("done") is not None
        assert neighbour.get("held") is not None
        assert ours.drop_keys() == 0
    finally:
        for store in (ours, neighbour):
            store.drop_keys()
            store.close()


def test_drop_keys_works_on_a_cluster(cluster_url):
    # Records hash to different slots of different nodes: one key per command.
    store = RedisStore(cluster_url, prefix=f"d{uuid.uuid4().hex[:10]}:")
    try:
        for i in range(30):
            assert isinstance(store.claim(f"k{i}", "fp", 30), Claimed)
        assert store.drop_keys() == 30
        assert all(store.get(f"k{i}") is None for i in range(30))
    finally:
        store.close()


def claimed_token(store: RedisStore, id: str) -> int:
    record = store.get(id)
    assert record is not None
    return record.token


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fingerprint=_TEXT,
    headers=st.lists(st.tuples(_TEXT, _TEXT), max_size=4).map(tuple),
    body=st.binary(max_size=300),
    status=st.integers(100, 599),
    replayable=st.booleans(),
    trace=st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
)
def test_records_and_responses_round_trip_whatever_bytes_they_hold(
    store, fingerprint, headers, body, status, replayable, trace
):
    """Separators of the record string and the response header (``,`` ``\\n`` space NUL)
    inside a fingerprint, a header or a body change nothing."""
    id = uuid.uuid4().hex
    claimed = store.claim(id, fingerprint, 30)
    assert isinstance(claimed, Claimed)
    span = None if trace is None else trace[:16]
    response = StoredResponse(status, headers, body, replayable, trace, span)
    assert store.complete(id, claimed.token, response, 30, 30)
    record = store.get(id)
    assert record is not None
    assert record.fingerprint == fingerprint
    assert record.token == claimed.token
    kept = response if replayable else StoredResponse(status, (), b"", False, trace, span)
    assert record.response == kept
    assert store.delete(id)


@pytest.mark.parametrize("prefix", ["a{b:", "c}"])
def test_a_prefix_with_braces_is_refused(prefix):
    with pytest.raises(ConfigurationError, match="braces"):
        RedisStore(REDIS_URL, prefix=prefix)


async def test_an_async_operation_past_its_deadline_answers_and_leaves_no_stale_reply(
    tmp_path: Path,
):
    """SPEC 17 on the async face, whose channel bounds each command with its connection's
    one timer (not redis-py's socket_timeout): a server that stalls past the deadline gets
    StoreUnavailable from the timeout, and the interrupted connection's late reply never
    answers a later call (test_redis_wire.py checks the channel itself)."""
    require("redis-server", redis_available())
    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url, prefix="d:", timeout=0.2, pool_size=1)
    try:
        assert isinstance(await store.aclaim("known", "fp", 60), Claimed)  # connection made
        # Stalled until the block ends: only the store's timeout can answer.
        with server.frozen(), pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.aget("known"), HANG)
        # The server now answers the GET on the dropped connection; a later call on this
        # loop must read its own reply, not that late one.
        assert await store.aget("absent") is None
        known = await store.aget("known")
        assert known is not None
        assert known.fingerprint == "fp"
    finally:
        await store.aclose()
        server.kill()

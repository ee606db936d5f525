"""The dead-letter queue (SPEC 25): parking, redaction, replay, reconciliation, pacing.

Each behaviour runs on every backend (SQLite, Redis, PostgreSQL: the ``dlq_url`` fixture).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.client_harness import (
    LIVE_COOKIE,
    LIVE_CREDENTIALS,
    FakeTime,
    Harness,
    Script,
    problem,
    reply,
)
from kit.dlq import DLQUrl
from kit.wakes import HANG
from retrysafe.client import (
    BudgetExhausted,
    CircuitBreaker,
    CircuitOpen,
    RetriesExhausted,
    RetryBudget,
    RetryDeferred,
    RetryPolicy,
)
from retrysafe.client.dlq import DeadLetterQueue, EntryState

SECRET = "Bearer parked-secret-token"


@pytest.fixture
def t() -> FakeTime:
    return FakeTime()


@pytest.fixture
def dlq(dlq_url: DLQUrl, t: FakeTime) -> Iterator[DeadLetterQueue]:
    queue = DeadLetterQueue(dlq_url.url, clock=t.wall, sleep=t.sleep, asleep=t.asleep, rate=2.0)
    yield queue
    queue.close()


def park_one(h: Harness, **headers: str) -> RetriesExhausted:
    with pytest.raises(RetriesExhausted) as caught:
        h.post(
            "http://user:pw@api.test/charges?x=1",
            json={"amount": 7},
            headers={"Authorization": SECRET, "Cookie": "sid=s3cr3t", **headers},
        )
    return caught.value


def test_exhausted_call_is_parked_with_credentials_redacted(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime, dlq_url: DLQUrl
) -> None:
    net = Script(reply(503, body=b"busy"))
    h = Harness(flavor, net, time=t, dlq=dlq)
    err = park_one(h, **{"X-Trace": "t-1"})
    assert err.parked is not None
    entry = dlq.get(err.parked)
    assert entry is not None
    assert entry.state is EntryState.PARKED
    assert entry.reason == "exhausted"
    assert entry.method == "POST"
    assert entry.url == "http://api.test/charges?x=1"  # userinfo gone
    assert entry.body == b'{"amount":7}'
    assert entry.key == err.key
    assert entry.redacted == ("authorization", "cookie")
    names = {k.lower() for k, _ in entry.headers}
    assert "authorization" not in names
    assert "cookie" not in names
    assert ("X-Trace", "t-1") in entry.headers
    assert [a.status for a in entry.attempts] == [503, 503, 503]
    assert entry.last_error == "HTTP 503"
    assert entry.replay_by == pytest.approx(entry.created_at + 24 * 3600)
    assert dlq.depth() == 1
    raw = dlq_url.dump()  # every byte the backend stored
    assert b"charges?x=1" in raw  # the dump does see the entry
    assert b"parked-secret-token" not in raw
    assert b"s3cr3t" not in raw
    assert b"pw@" not in raw


def test_other_reasons_park_with_their_not_before(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    h = Harness(flavor, Script(reply(503, {"retry-after": "600"})), time=t, dlq=dlq)
    with pytest.raises(RetryDeferred) as deferred:
        h.post()
    entry = dlq.get(deferred.value.parked or "")
    assert entry is not None
    assert entry.reason == "retry_after"
    assert entry.not_before == pytest.approx(t.wall() + 600)

    breaker = CircuitBreaker(minimum_calls=1, open_for=30.0, clock=t.monotonic)
    one = RetryPolicy(attempts=1)
    h = Harness(flavor, Script(reply(500)), time=t, dlq=dlq, breaker=breaker, retry=one)
    with pytest.raises(RetriesExhausted):
        h.post()  # this failure opens the circuit
    with pytest.raises(CircuitOpen) as opened:
        h.post()
    entry = dlq.get(opened.value.parked or "")
    assert entry is not None
    assert entry.reason == "circuit_open"
    assert entry.not_before == pytest.approx(opened.value.not_before)
    assert entry.attempts == ()

    empty = RetryBudget(ratio=0.0, floor=0.0, burst=1e-6, clock=t.monotonic)
    h = Harness(flavor, Script(reply(503)), time=t, dlq=dlq, budget=empty)
    with pytest.raises(BudgetExhausted) as refused:
        h.post()
    entry = dlq.get(refused.value.parked or "")
    assert entry is not None
    assert entry.reason == "budget"


def test_unkeyed_calls_and_unchosen_reasons_are_not_parked(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    h = Harness(flavor, Script(reply(503)), time=t, dlq=dlq)
    with pytest.raises(RetriesExhausted) as caught:
        h.request("GET", "http://api.test/x")
    assert caught.value.parked is None
    h = Harness(flavor, Script(reply(503)), time=t, dlq=dlq, park_on={"budget"})
    with pytest.raises(RetriesExhausted) as caught:
        h.post()
    assert caught.value.parked is None
    assert dlq.depth() == 0


def test_replay_resends_the_same_key_with_live_credentials(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, dlq=dlq)
    err = park_one(h)
    first = net.seen[0]
    net.answers = [reply(201, {"idempotent-replayed": "true"}, b"charged")]
    assert h.replay(dlq) == []  # not before the backoff pause it would have taken
    t.advance(8.0)
    results = h.replay(dlq)
    assert len(results) == 1
    result = results[0]
    assert (result.id, result.key, result.state, result.status) == (
        err.parked,
        err.key,
        EntryState.DONE,
        201,
    )
    assert result.replayed
    resent = net.seen[-1]
    assert resent.headers["idempotency-key"] == err.key
    assert resent.content == first.content
    assert resent.url == "http://api.test/charges?x=1"
    assert resent.headers["authorization"] == LIVE_CREDENTIALS
    assert resent.headers["cookie"] == LIVE_COOKIE  # the live one: the parked one never is
    assert dlq.depth() == 0
    assert h.replay(dlq, force=True) == []  # done entries are never sent again
    assert dlq.purge() == 1


def test_replay_waits_for_not_before_unless_forced(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    net = Script(reply(503, {"retry-after": "600"}))
    h = Harness(flavor, net, time=t, dlq=dlq)
    with pytest.raises(RetryDeferred):
        h.post()
    net.answers = [reply(201)]
    assert h.replay(dlq) == []
    assert len(net.seen) == 1
    t.advance(600)
    [result] = h.replay(dlq)
    assert result.state is EntryState.DONE


def test_entries_past_their_window_are_flagged_not_resent(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, dlq=dlq)
    park_one(h)
    sent = len(net.seen)
    t.advance(24 * 3600 + 1)
    [result] = h.replay(dlq)
    assert result.state is EntryState.RECONCILE
    assert len(net.seen) == sent
    assert [e.state for e in dlq.entries()] == [EntryState.RECONCILE]


def test_replay_mismatch_is_terminal_and_in_flight_stays_parked(
    flavor: str, dlq: DeadLetterQueue, t: FakeTime
) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    a, b = park_one(h), park_one(h)
    net.answers = [
        problem(422, "key-mismatch"),
        problem(409, "request-in-flight", **{"retry-after": "1"}),
    ]
    t.advance(8.0)
    results = {r.id: r for r in h.replay(dlq)}
    assert results[a.parked or ""].state is EntryState.FAILED
    assert results[a.parked or ""].status == 422
    waiting = results[b.parked or ""]
    assert waiting.state is EntryState.PARKED
    assert waiting.status == 409
    entry = dlq.get(b.parked or "")
    assert entry is not None
    assert entry.replays == 1
    assert entry.not_before > t.wall()
    assert dlq.depth() == 1  # a failed replay never parks a second copy


def test_replays_are_rate_limited(flavor: str, dlq: DeadLetterQueue, t: FakeTime) -> None:
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    for _ in range(4):
        park_one(h)
    net.answers = [reply(201)]
    t.advance(8.0)
    t.sleeps.clear()
    results = h.replay(dlq)
    assert [r.state for r in results] == [EntryState.DONE] * 4
    assert t.sleeps == [0.5, 0.5, 0.5]  # rate=2/s: one replay every half second


def test_replay_respects_an_open_breaker(flavor: str, dlq: DeadLetterQueue, t: FakeTime) -> None:
    breaker = CircuitBreaker(minimum_calls=1, open_for=30.0, clock=t.monotonic)
    net = Script(reply(503))
    h = Harness(flavor, net, time=t, dlq=dlq, breaker=breaker, retry=RetryPolicy(attempts=1))
    err = park_one(h)
    sent = len(net.seen)
    [result] = h.replay(dlq, force=True)
    assert result.state is EntryState.PARKED
    assert len(net.seen) == sent  # refused by the circuit: nothing sent
    entry = dlq.get(err.parked or "")
    assert entry is not None
    assert entry.not_before == pytest.approx(t.wall() + 30.0)


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    from retrysafe import ConfigurationError

    with pytest.raises(ConfigurationError, match="supports sqlite://, redis://"):
        DeadLetterQueue("mysql://localhost/0")
    with pytest.raises(ConfigurationError, match="not Cluster"):
        DeadLetterQueue("redis+cluster://localhost:7000")
    with pytest.raises(ConfigurationError, match="pool_size"):
        DeadLetterQueue("redis://localhost/0?pool_size=x&prefix=a")
    with pytest.raises(ConfigurationError):
        DeadLetterQueue("sqlite://relative.db")
    q = DeadLetterQueue(tmp_path / "plain.db")
    assert q.depth() == 0
    q.close()


def test_listing_is_oldest_first_by_state_and_purge_counts(
    dlq: DeadLetterQueue, t: FakeTime
) -> None:
    """The storage operations every backend implements (client/dlq/_backend.py)."""
    h = Harness("sync", Script(reply(503)), time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    parked = []
    for _ in range(5):
        parked.append(park_one(h).parked)
        t.advance(1.0)
    assert [e.id for e in dlq.entries()] == parked
    assert [e.id for e in dlq.entries(limit=2)] == parked[:2]
    net = Script(reply(201), reply(422), reply(201))
    replayer = Harness("sync", net, time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    t.advance(8.0)
    replayer.replay(dlq, ids=parked[:3])
    states = {e.id: e.state for e in dlq.entries()}
    assert [states[i] for i in parked] == [
        EntryState.DONE,
        EntryState.FAILED,
        EntryState.DONE,
        EntryState.PARKED,
        EntryState.PARKED,
    ]
    assert [e.id for e in dlq.entries(EntryState.DONE)] == [parked[0], parked[2]]
    assert [e.id for e in dlq.entries(EntryState.PARKED)] == parked[3:]
    assert dlq.depth() == 2
    assert dlq.purge(EntryState.FAILED) == 1
    assert dlq.purge() == 2  # done and failed: only the two done ones are left
    assert [e.id for e in dlq.entries()] == parked[3:]
    assert dlq.get(parked[0]) is None
    assert dlq.purge(EntryState.PARKED) == 2
    assert dlq.depth() == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?connect_timeout=0.5&timeout=0.5",
        "postgresql://postgres@127.0.0.1:1/test?timeout=0.5",
    ],
)
def test_an_unreachable_store_fails_with_store_unavailable_instead_of_hanging(url: str) -> None:
    """Nothing listens on port 1: the queue is made anyway, each operation fails (HANG only
    catches an operation that never returns)."""
    from concurrent.futures import ThreadPoolExecutor

    from retrysafe.errors import StoreUnavailable

    queue = DeadLetterQueue(url)
    pool = ThreadPoolExecutor(1)
    try:
        caught = pool.submit(queue.depth).exception(timeout=HANG)
    finally:
        pool.shutdown(wait=False)
    assert isinstance(caught, StoreUnavailable), caught
    assert re.search(r"dead-letter queue \w+://127.0.0.1:1/", str(caught)), caught
    queue.close()


def test_replay_reads_past_a_page_of_entries_that_are_not_due(
    dlq: DeadLetterQueue, t: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oldest entries wait for their Retry-After; newer ones, further down the queue than
    one page, are due and must be replayed all the same."""
    monkeypatch.setattr("retrysafe.client.dlq._queue._PAGE", 3)
    later = Harness("sync", Script(reply(503, {"retry-after": "3600"})), time=t, dlq=dlq)
    for _ in range(7):  # more than two pages of entries not due for an hour
        with pytest.raises(RetryDeferred):
            later.post()
    now = Harness("sync", Script(reply(503)), time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    due = [park_one(now).parked for _ in range(2)]
    t.advance(60)
    net = Script(reply(201), reply(201))
    replayer = Harness("sync", net, time=t, dlq=dlq, retry=RetryPolicy(attempts=1))
    results = replayer.replay(dlq)
    assert [r.id for r in results] == due
    assert [r.state for r in results] == [EntryState.DONE, EntryState.DONE]
    assert len(dlq.entries(EntryState.PARKED)) == 7
    assert [e.id for e in dlq.entries(EntryState.PARKED, limit=3, offset=6)] == [
        e.id for e in dlq.entries(EntryState.PARKED)[6:]
    ]

"""The SQLite atomic unit on its own (SPEC 13a): lazy transaction, one commit, fencing, phases.

A fake store clock moves leases along; no process is needed to show the fencing rules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.stores import FakeClock
from retrysafe._records import Claimed, Existing, State, StoredResponse
from retrysafe.errors import ClaimTakenOver, ConfigurationError, StoreUnavailable
from retrysafe.stores._base import AtomicStore, AtomicUnit
from retrysafe.stores._sqlite_atomic import SQLiteUnit
from retrysafe.stores.sqlite import SQLiteStore

FP = "fp"
LEASE = 10.0
OK = StoredResponse(201, (("content-type", "text/plain"),), b"charged")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "app.db", clock=clock, busy_timeout=0.2)
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TABLE ledger (key TEXT, cents INTEGER)")
    yield store
    store.close()


def ledger(store: SQLiteStore) -> list[tuple[str, int]]:
    with sqlite3.connect(store.path) as raw:
        return raw.execute("SELECT key, cents FROM ledger ORDER BY rowid").fetchall()


def claim(store: SQLiteStore, id: str = "k") -> int:
    result = store.claim(id, FP, LEASE)
    assert isinstance(result, Claimed)
    return result.token


def unit(store: SQLiteStore, token: int, id: str = "k") -> SQLiteUnit:
    made = store.unit(id, token, FP, LEASE, 3600.0)
    made.load()
    return made


def test_sqlite_store_and_unit_meet_the_protocols(store: SQLiteStore) -> None:
    assert isinstance(store, AtomicStore)
    assert isinstance(unit(store, claim(store)), AtomicUnit)


def test_the_transaction_begins_only_when_asked_and_commits_once(store: SQLiteStore) -> None:
    u = unit(store, claim(store))
    assert not u.holding
    # No write lock is taken until the handler asks: another writer proceeds meanwhile.
    assert isinstance(store.claim("other", FP, LEASE), Claimed)
    conn = u.connection()
    assert u.holding
    assert conn.in_transaction
    conn.execute("INSERT INTO ledger VALUES ('k', 500)")
    # The write lock is held: another writer waits, then fails (busy timeout 0.2 s).
    with pytest.raises(StoreUnavailable):
        store.claim("third", FP, LEASE)
    assert ledger(store) == []  # nothing visible before the commit
    record = store.get("k")
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert u.complete(OK, 60.0, 60.0)
    u.close()
    assert ledger(store) == [("k", 500)]
    record = store.get("k")
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response == OK


def test_abort_rolls_back_the_writes_and_leaves_the_claim(store: SQLiteStore) -> None:
    token = claim(store)
    u = unit(store, token)
    u.connection().execute("INSERT INTO ledger VALUES ('k', 1)")
    u.abort()
    u.close()
    assert ledger(store) == []
    assert store.release("k", token)


def test_a_takeover_before_the_transaction_begins_is_refused(
    store: SQLiteStore, clock: FakeClock
) -> None:
    old = claim(store)
    u = unit(store, old)
    clock.advance(LEASE + 1)
    new = store.claim("k", FP, LEASE)
    assert isinstance(new, Claimed)
    assert new.recovered
    with pytest.raises(ClaimTakenOver):
        u.connection()
    assert not u.holding
    # And completion by the old holder writes nothing.
    assert u.complete(OK, 60.0, 60.0) is False
    u.close()
    record = store.get("k")
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.token == new.token


def test_a_takeover_between_phases_rolls_back_the_later_writes(
    store: SQLiteStore, clock: FakeClock
) -> None:
    old = claim(store)
    u = unit(store, old)
    u.connection().execute("INSERT INTO ledger VALUES ('k', 1)")
    u.mark("one")
    clock.advance(LEASE + 1)  # the holder stalls between phases, past its lease
    new = store.claim("k", FP, LEASE)
    assert isinstance(new, Claimed)
    with pytest.raises(ClaimTakenOver):
        u.connection()
    assert u.complete(OK, 60.0, 60.0) is False
    u.close()
    assert ledger(store) == [("k", 1)]  # phase one's write stands, nothing after it
    # The new holder resumes after phase one.
    resumed = unit(store, new.token)
    assert resumed.phases == ("one",)
    resumed.close()


def test_holding_the_lock_keeps_the_claim_even_past_its_lease(
    store: SQLiteStore, clock: FakeClock
) -> None:
    """SQLite's write lock: no takeover can commit while the unit's transaction is open."""
    u = unit(store, claim(store))
    u.connection().execute("INSERT INTO ledger VALUES ('k', 7)")
    clock.advance(LEASE + 1)
    taker = SQLiteStore(store.path, clock=clock, busy_timeout=0.1)
    with pytest.raises(StoreUnavailable):  # the would-be taker waits for the lock, in vain
        taker.claim("k", FP, LEASE)
    taker.close()
    assert u.complete(OK, 60.0, 60.0)
    u.close()
    assert ledger(store) == [("k", 7)]
    replay = store.claim("k", FP, LEASE)
    assert isinstance(replay, Existing)
    assert replay.record.response == OK


def test_phases_commit_work_renew_the_lease_and_show_on_the_record(
    store: SQLiteStore, clock: FakeClock
) -> None:
    token = claim(store)
    u = unit(store, token)
    assert u.phases == ()
    before = store.get("k")
    assert before is not None
    assert before.phase is None
    u.connection().execute("INSERT INTO ledger VALUES ('k', 1)")
    clock.advance(LEASE / 2)
    u.mark("created")
    assert not u.holding  # the phase committed; the next transaction begins afresh
    assert ledger(store) == [("k", 1)]
    record = store.get("k")
    assert record is not None
    assert record.phase == "created"
    assert record.lease_until == pytest.approx(clock() + LEASE)
    u.mark("nothing-written")  # a phase with no writes still records its name
    assert u.phases == ("created", "nothing-written")
    assert u.complete(OK, 60.0, 60.0)
    u.close()
    done = store.get("k")
    assert done is not None
    assert done.phase is None


def test_phases_survive_a_release_so_the_retry_resumes(store: SQLiteStore) -> None:
    token = claim(store)
    u = unit(store, token)
    u.connection().execute("INSERT INTO ledger VALUES ('k', 1)")
    u.mark("one")
    u.connection().execute("INSERT INTO ledger VALUES ('k', 2)")
    u.abort()  # the handler failed in phase two
    u.close()
    assert store.release("k", token)
    retry = unit(store, claim(store))
    assert retry.phases == ("one",)
    retry.close()
    # Another request under the released key (another fingerprint) does not inherit them.
    other = store.claim("k2", "other", LEASE)
    assert isinstance(other, Claimed)
    assert ledger(store) == [("k", 1)]


def test_phases_of_another_fingerprint_are_not_resumed(store: SQLiteStore) -> None:
    token = claim(store)
    u = unit(store, token)
    u.mark("one")
    u.close()
    assert store.release("k", token)
    result = store.claim("k", "a different request", LEASE)
    assert isinstance(result, Claimed)
    other = store.unit("k", result.token, "a different request", LEASE, 3600.0)
    other.load()
    assert other.phases == ()
    record = store.get("k")
    assert record is not None
    assert record.phase is None


def test_purge_and_delete_drop_recovery_points(store: SQLiteStore, clock: FakeClock) -> None:
    for id in ("a", "b"):
        token = claim(store, id)
        u = store.unit(id, token, FP, LEASE, 100.0)
        u.mark("one")
        u.close()
        assert store.release(id, token)
    assert store.delete("a") is False  # released: no record, but its phases go too
    clock.advance(101.0)
    store.purge()
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("SELECT count(*) FROM retrysafe_records_phases").fetchone() == (0,)


def test_phase_names_must_be_strings(store: SQLiteStore) -> None:
    u = unit(store, claim(store))
    with pytest.raises(ConfigurationError):
        u.mark("")
    u.close()


def test_connections_go_back_to_a_pool_outside_any_transaction(store: SQLiteStore) -> None:
    u = unit(store, claim(store))
    first = u.connection()
    first.execute("INSERT INTO ledger VALUES ('k', 3)")
    u.close()  # never completed: rolled back
    assert not first.in_transaction
    assert ledger(store) == []
    again = unit(store, claim(store, "k2"), "k2")
    assert again.connection() is first  # reused
    again.close()

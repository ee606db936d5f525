"""The PostgreSQL atomic unit on its own (SPEC 13a): lazy transaction, one commit, fencing by
``SELECT ... FOR UPDATE``, recovery points. Real server, real clock: leases are short."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from kit.atomic_pg import PgDb, pg
from kit.wakes import HANG
from retrysafe._decide import Complete, Release
from retrysafe._engine import Ending, afinish, finish
from retrysafe._policy import Policy
from retrysafe._records import Claimed, ClaimResult, Existing, State, StoredResponse
from retrysafe.errors import ClaimTakenOver, ConfigurationError
from retrysafe.stores._base import AtomicStore, AtomicUnit
from retrysafe.stores._postgres_atomic import PostgresUnit
from retrysafe.stores.postgres import PostgresStore

__all__ = ["pg"]

FP = "fp"
LEASE = 10.0
SHORT = 0.2  # a lease that lapses within the test (real server clock)
OK = StoredResponse(201, (("content-type", "text/plain"),), b"charged")
POLICY = Policy(lease=LEASE)


@pytest.fixture
def other(pg: PgDb) -> Iterator[PostgresStore]:
    """A second handle on the same tables: another worker process."""
    store = pg.open()
    yield store
    store.close()


def claim(store: PostgresStore, id: str = "k", lease: float = LEASE) -> int:
    result = store.claim(id, FP, lease)
    assert isinstance(result, Claimed)
    return result.token


def unit(store: PostgresStore, token: int, id: str = "k", lease: float = LEASE) -> PostgresUnit:
    made = store.unit(id, token, FP, lease, 3600.0)
    made.load()
    return made


def take_over(other: PostgresStore, id: str = "k") -> int:
    """Let a SHORT lease lapse (real time) and take the key over as a retry would."""
    time.sleep(SHORT + 0.05)
    result = other.claim(id, FP, LEASE)
    assert isinstance(result, Claimed)
    assert result.recovered
    return result.token


def insert(conn: psycopg.Connection[object], pg: PgDb, cents: int) -> None:
    conn.execute(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('k', %s)", (cents,))


def test_postgres_store_and_unit_meet_the_protocols(pg: PgDb) -> None:
    assert isinstance(pg.store, AtomicStore)
    assert isinstance(unit(pg.store, claim(pg.store)), AtomicUnit)


def test_the_writes_and_the_completion_commit_together(pg: PgDb, other: PostgresStore) -> None:
    u = unit(pg.store, claim(pg.store))
    assert not u.holding  # lazy: nothing is open until the handler asks
    conn = u.connection()
    assert u.holding
    assert isinstance(conn, psycopg.Connection)
    insert(conn, pg, 500)
    # Only the record row is locked: other keys claim and complete meanwhile.
    token = claim(other, "other-key")
    assert other.complete("other-key", token, OK, 60.0, 60.0)
    assert pg.ledger() == []  # nothing visible before the commit
    record = other.get("k")
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert finish(u, pg.store, Complete(OK), POLICY) is Ending.COMMITTED
    assert pg.ledger() == [("k", 500)]
    record = other.get("k")
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body == b"charged"


def test_a_release_rolls_the_writes_back_and_frees_the_key(pg: PgDb) -> None:
    u = unit(pg.store, claim(pg.store))
    insert(u.connection(), pg, 500)
    assert finish(u, pg.store, Release(), POLICY) is Ending.RELEASED
    assert pg.ledger() == []
    assert pg.store.get("k") is None
    assert isinstance(pg.store.claim("k", FP, LEASE), Claimed)  # a retry runs again


def test_a_claim_taken_over_before_begin_is_refused_and_nothing_commits(
    pg: PgDb, other: PostgresStore
) -> None:
    u = unit(pg.store, claim(pg.store, lease=SHORT))
    new_token = take_over(other)
    with pytest.raises(ClaimTakenOver) as info:
        u.connection()
    assert info.value.retry_after == 1.0
    assert u.lost
    assert not u.holding
    assert finish(u, pg.store, Complete(OK), POLICY) is Ending.TAKEN_OVER
    assert pg.ledger() == []
    record = other.get("k")
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.token == new_token  # the new holder's claim stands
    assert other.complete("k", new_token, OK, 60.0, 60.0)


def _lock_waiters(pg: PgDb) -> int:
    """Backends waiting on a lock in a statement on our records (the database is shared)."""
    with psycopg.connect(pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND position(%s in query) > 0",
            (f"{pg.prefix}records",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_takeover_waits_for_the_open_transaction_then_replays_it(
    pg: PgDb, other: PostgresStore
) -> None:
    """The row lock of the re-check holds a takeover off, even past the lease: the token
    checked at BEGIN still holds at COMMIT, and the retry then replays the result."""
    u = unit(pg.store, claim(pg.store, lease=SHORT))
    insert(u.connection(), pg, 500)
    time.sleep(SHORT + 0.05)  # the lease lapses while the handler still runs
    got: list[ClaimResult] = []
    retry = threading.Thread(target=lambda: got.append(other.claim("k", FP, LEASE)))
    retry.start()
    deadline = time.monotonic() + HANG  # bounds a hang: the wait appears when it appears
    while _lock_waiters(pg) == 0:  # the retry's upsert is queued behind our row lock
        assert time.monotonic() < deadline, "the takeover did not wait for the transaction"
    assert not got
    assert finish(u, pg.store, Complete(OK), POLICY) is Ending.COMMITTED
    retry.join(5)
    assert len(got) == 1
    result = got[0]
    assert isinstance(result, Existing)
    assert result.record.state is State.COMPLETED
    assert pg.ledger() == [("k", 500)]


def test_recovery_points_commit_their_work_and_survive_a_crash(
    pg: PgDb, other: PostgresStore
) -> None:
    u = unit(pg.store, claim(pg.store, lease=SHORT), lease=SHORT)  # phases renew it
    assert u.phases == ()
    insert(u.connection(), pg, 1)
    u.mark("one")
    assert not u.holding  # the phase committed; the next write begins anew
    insert(u.connection(), pg, 2)
    u.close()  # a crash before the next phase: its write is rolled back
    assert pg.ledger() == [("k", 1)]
    record = other.get("k")
    assert record is not None
    assert record.phase == "one"
    # A retry takes the key over and resumes after the committed phase.
    resumed = unit(other, take_over(other))
    assert resumed.phases == ("one",)
    insert(resumed.connection(), pg, 3)
    assert finish(resumed, other, Complete(OK), POLICY) is Ending.COMMITTED
    assert pg.ledger() == [("k", 1), ("k", 3)]
    record = other.get("k")
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.phase is None  # a completed record replays, never resumes


def test_a_phase_after_a_takeover_is_refused(pg: PgDb, other: PostgresStore) -> None:
    u = unit(pg.store, claim(pg.store, lease=SHORT), lease=SHORT)
    insert(u.connection(), pg, 1)
    u.mark("one")
    take_over(other)
    with pytest.raises(ClaimTakenOver):
        u.connection()
    with pytest.raises(ClaimTakenOver):
        u.mark("two")
    u.close()
    assert pg.ledger() == [("k", 1)]


def test_bad_phase_names_and_mixed_handles_are_refused(pg: PgDb) -> None:
    u = unit(pg.store, claim(pg.store))
    with pytest.raises(ConfigurationError):
        u.mark("")
    u.connection()
    with pytest.raises(ConfigurationError):
        asyncio.run(u.aconnection())
    u.close()
    assert pg.ledger() == []


def test_the_async_unit_commits_rolls_back_and_is_fenced(pg: PgDb, other: PostgresStore) -> None:
    async def main() -> None:
        ok = pg.store.unit("a", claim(pg.store, "a"), FP, LEASE, 3600.0)
        await ok.aload()
        conn = await ok.aconnection()
        assert isinstance(conn, psycopg.AsyncConnection)
        await conn.execute(f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('a', 1)")
        await ok.amark("one")
        await (await ok.aconnection()).execute(
            f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('a', 2)"
        )
        assert await afinish(ok, pg.store, Complete(OK), POLICY) is Ending.COMMITTED

        bad = pg.store.unit("b", claim(pg.store, "b"), FP, LEASE, 3600.0)
        await bad.aload()
        await (await bad.aconnection()).execute(
            f"INSERT INTO {pg.ledger_table} (key, cents) VALUES ('b', 1)"
        )
        assert await afinish(bad, pg.store, Release(), POLICY) is Ending.RELEASED

        fenced = pg.store.unit("c", claim(pg.store, "c", lease=SHORT), FP, LEASE, 3600.0)
        await fenced.aload()
        await asyncio.to_thread(take_over, other, "c")
        with pytest.raises(ClaimTakenOver):
            await fenced.aconnection()
        assert await afinish(fenced, pg.store, Complete(OK), POLICY) is Ending.TAKEN_OVER

    asyncio.run(main())
    assert [(k, c) for k, c in pg.ledger()] == [("a", 1), ("a", 2)]
    record = other.get("a")
    assert record is not None
    assert record.state is State.COMPLETED
    assert other.get("b") is None
    record = other.get("c")
    assert record is not None
    assert record.state is State.IN_FLIGHT

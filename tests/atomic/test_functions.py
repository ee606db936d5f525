"""``@idempotent(..., atomic=True)`` for sync and async functions (SPEC 13a, 28).

Each scenario runs twice, through a sync and an async function (mirrored sync/async tests).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kit.stores import FakeClock
from retrysafe import Policy, atomic
from retrysafe._records import Claimed
from retrysafe.atomic._context import current_unit
from retrysafe.errors import (
    AtomicUnsupported,
    ClaimTakenOver,
    NoAtomicContext,
    StillInFlight,
)
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import idempotent

POLICY = Policy(lease=10.0)


class Declined(Exception):
    """A business refusal that is stored and replayed, like a 4xx."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "app.db", clock=clock)
    with sqlite3.connect(store.path) as raw:
        raw.execute("CREATE TABLE ledger (key TEXT, cents INTEGER)")
    return store


def ledger(store: SQLiteStore) -> list[tuple[str, int]]:
    with sqlite3.connect(store.path) as raw:
        return raw.execute("SELECT key, cents FROM ledger ORDER BY rowid").fetchall()


def body(key: str, cents: int, how: str, ctx: dict[str, Any]) -> int:
    """The shared work: write in the store's transaction, then behave as ``how`` says."""
    ctx["runs"] = ctx.get("runs", 0) + 1
    ctx.setdefault("derived", []).append(atomic.derived_key("psp"))
    if how == "take_over":  # a retry took the key over before we began
        unit = current_unit()
        record = ctx["store"].get(unit.id)
        ctx["clock"].advance(POLICY.lease_s + 1)
        other = SQLiteStore(ctx["store"].path, clock=ctx["clock"])
        assert isinstance(other.claim(unit.id, record.fingerprint, 10.0), Claimed)
        other.close()
    conn = atomic.transaction()
    conn.execute("INSERT INTO ledger VALUES (?, ?)", (key, cents))
    if how == "raise":
        raise RuntimeError("after the write")
    if how == "decline":
        raise Declined(key)
    return cents


Call = Callable[[str, int, str], Any]


@pytest.fixture(params=["sync", "async"])
def call(
    request: pytest.FixtureRequest, store: SQLiteStore, clock: FakeClock
) -> tuple[Call, dict[str, Any]]:
    ctx: dict[str, Any] = {"store": store, "clock": clock}
    options: dict[str, Any] = {
        "key": lambda key, cents, how: key,
        "ignore_args": ("how",),
        "policy": POLICY,
        "atomic": True,
        "store_exceptions": (Declined,),
    }
    if request.param == "sync":

        @idempotent(store, **options)
        def charge(key: str, cents: int, how: str) -> int:
            return body(key, cents, how, ctx)

        return charge, ctx

    @idempotent(store, **options)
    async def acharge(key: str, cents: int, how: str) -> int:
        return body(key, cents, how, ctx)

    return (lambda key, cents, how: asyncio.run(acharge(key, cents, how))), ctx


def test_the_result_commits_with_the_write_and_replays(
    call: tuple[Call, dict[str, Any]], store: SQLiteStore
) -> None:
    charge, ctx = call
    assert charge("k", 500, "ok") == 500
    assert charge("k", 500, "ok") == 500
    assert ctx["runs"] == 1
    assert ledger(store) == [("k", 500)]


def test_an_exception_rolls_back_the_write_and_releases(
    call: tuple[Call, dict[str, Any]], store: SQLiteStore
) -> None:
    charge, ctx = call
    with pytest.raises(RuntimeError):
        charge("k", 500, "raise")
    assert ledger(store) == []
    assert charge("k", 500, "ok") == 500  # the retry runs again
    assert ctx["runs"] == 2
    assert ctx["derived"][0] == ctx["derived"][1]  # the same downstream key each attempt
    assert ledger(store) == [("k", 500)]


def test_a_stored_exception_commits_its_writes_like_a_4xx(
    call: tuple[Call, dict[str, Any]], store: SQLiteStore
) -> None:
    charge, ctx = call
    with pytest.raises(Declined):
        charge("k", 1, "decline")
    with pytest.raises(Declined):
        charge("k", 1, "decline")  # replayed, not run
    assert ctx["runs"] == 1
    assert ledger(store) == [("k", 1)]


def test_a_taken_over_call_raises_and_commits_nothing(
    call: tuple[Call, dict[str, Any]], store: SQLiteStore
) -> None:
    charge, _ = call
    with pytest.raises(ClaimTakenOver) as caught:
        charge("k", 500, "take_over")
    assert isinstance(caught.value, StillInFlight)  # callers retrying StillInFlight just work
    assert caught.value.retry_after == 1.0
    assert ledger(store) == []


def test_atomic_is_refused_for_stores_that_cannot_give_it() -> None:
    with pytest.raises(AtomicUnsupported):

        @idempotent(MemoryStore(), atomic=True)
        def f() -> None: ...


def test_the_api_outside_an_atomic_execution_says_so(store: SQLiteStore) -> None:
    with pytest.raises(NoAtomicContext):
        atomic.transaction()
    with pytest.raises(NoAtomicContext):
        atomic.current_phase()

    @idempotent(store, key="plain")  # not atomic: no unit either
    def plain() -> None:
        atomic.derived_key("x")

    with pytest.raises(NoAtomicContext):
        plain()


def test_recovery_points_belong_to_one_request_not_to_the_key(store: SQLiteStore) -> None:
    """After a release, the same key with other arguments is another operation: it does not
    resume the first one's phases (their committed work stays, as committed work does)."""
    seen: list[tuple[str | None, bool]] = []

    @idempotent(store, key="trip", atomic=True)
    def trip(fail: bool) -> str:
        seen.append((atomic.current_phase(), atomic.reached("booked")))
        if not atomic.reached("booked"):
            atomic.transaction().execute("INSERT INTO ledger VALUES ('booked', 1)")
            atomic.phase("booked")
        if fail:
            raise RuntimeError("crash in phase two")
        return atomic.derived_key("booked")

    with pytest.raises(RuntimeError):
        trip(True)
    trip(False)
    assert seen == [(None, False), (None, False)]
    assert ledger(store) == [("booked", 1), ("booked", 1)]


def test_phases_resume_after_a_failure(store: SQLiteStore) -> None:
    seen: list[str | None] = []

    @idempotent(store, key="trip", atomic=True, ignore_args=("fail",))
    def trip(fail: bool) -> str:
        seen.append(atomic.current_phase())
        if not atomic.reached("booked"):
            atomic.transaction().execute("INSERT INTO ledger VALUES ('booked', 1)")
            atomic.phase("booked")
        if fail:
            raise RuntimeError("crash in phase two")
        atomic.transaction().execute("INSERT INTO ledger VALUES ('paid', 2)")
        return atomic.derived_key("pay")

    with pytest.raises(RuntimeError):
        trip(True)
    key = trip(False)
    assert seen == [None, "booked"]
    assert ledger(store) == [("booked", 1), ("paid", 2)]
    assert trip(False) == key  # replayed

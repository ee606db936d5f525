"""The PostgreSQL store's pipelined request path (stores/_pg_pipeline.py), on a real server.

Statements of many requests share a few connections in libpq's pipeline mode. What must hold
whatever the interleaving: each caller gets its own statement's answer (never a neighbour's,
also when callers are cancelled mid-flight), an error aborts only its own statement, a failed
prepare is prepared again, the loop never holds more than ``pool_size`` connections, and a
connection the server drops fails only what was in flight on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe._records import Claimed, State, StoredResponse
from retrysafe.errors import StoreUnavailable
from retrysafe.stores import _pg_pipeline
from retrysafe.stores.postgres import PostgresStore

LEASE = 600.0  # never lapses during a test
TTL = 3600.0
WAIT = 30.0  # bounds a hang only


@pytest.fixture
def prefix() -> Iterator[str]:
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    name = f"pp{uuid.uuid4().hex[:10]}_"
    yield name
    store = PostgresStore(POSTGRES_URL, table_prefix=name, pool_min=0)
    try:
        store.drop_schema()
    finally:
        store.close()


def response(body: bytes) -> StoredResponse:
    return StoredResponse(201, (("content-type", "application/json"),), body, True, None, None)


def backends_of(prefix: str) -> list[int]:
    """The server processes whose last statement touched this test's table."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE %s",
            (f"%{prefix}records%",),
        ).fetchall()
    return [pid for (pid,) in rows]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT))


def test_concurrent_callers_each_get_their_own_answer(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=3)

    async def scenario() -> None:
        keys = [f"k{i}" for i in range(120)]
        claims = await asyncio.gather(*(store.aclaim(k, f"fp-{k}", LEASE) for k in keys))
        assert all(isinstance(c, Claimed) for c in claims)
        done = await asyncio.gather(
            *(
                store.acomplete(k, c.token, response(k.encode()), TTL, TTL)
                for k, c in zip(keys, claims, strict=True)
                if isinstance(c, Claimed)
            )
        )
        assert done == [True] * len(keys)
        records = await asyncio.gather(*(store.aget(k) for k in keys))
        for key, record in zip(keys, records, strict=True):
            assert record is not None
            assert (record.id, record.fingerprint, record.state) == (
                key,
                f"fp-{key}",
                State.COMPLETED,
            )
            assert record.response is not None
            assert record.response.body == key.encode()
        tokens = [c.token for c in claims if isinstance(c, Claimed)]
        assert tokens == [r.token for r in records if r is not None]
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_cancelled_callers_do_not_shift_the_answers_of_the_others(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=2)

    async def scenario() -> None:
        await store.aclaim("warm", "fp", LEASE)  # the table and statements exist
        keys = [f"c{i}" for i in range(80)]
        tasks = [asyncio.create_task(store.aclaim(k, f"fp-{k}", LEASE)) for k in keys]
        await asyncio.sleep(0)  # every task has sent its statement (none can be answered yet)
        for task in tasks[::2]:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks[1::2], outcomes[1::2], strict=True):
            assert isinstance(outcome, Claimed), (task, outcome)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[::2])
        # A cancelled claim may have run or not (sent, queued, or still connecting when it
        # was cancelled); a record that exists is whole and its own.
        records = await asyncio.gather(*(store.aget(k) for k in keys))
        for key, record in zip(keys, records, strict=True):
            if record is not None:
                assert (record.id, record.fingerprint) == (key, f"fp-{key}")
        for key, outcome in zip(keys[1::2], outcomes[1::2], strict=True):
            record = records[keys.index(key)]
            assert isinstance(outcome, Claimed)
            assert record is not None
            assert outcome.token == record.token  # the answer to this caller's own claim
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_an_error_aborts_only_its_own_statement(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=1)

    async def scenario() -> None:
        await store.aclaim("warm", "fp", LEASE)
        good = [store.aclaim(f"g{i}", "fp", LEASE) for i in range(10)]
        # A token beyond bigint: the server refuses this one statement (numeric out of range).
        bad = store.acomplete("warm", 2**70, response(b"x"), TTL, TTL)
        outcomes = await asyncio.gather(*good[:5], bad, *good[5:], return_exceptions=True)
        assert isinstance(outcomes[5], StoreUnavailable), outcomes[5]
        assert isinstance(outcomes[5].__cause__, psycopg.errors.NumericValueOutOfRange)
        others = outcomes[:5] + outcomes[6:]
        assert all(isinstance(o, Claimed) for o in others), others
        assert len({o.token for o in others if isinstance(o, Claimed)}) == 10
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_a_statement_that_failed_to_prepare_is_prepared_again(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, init_schema=False)

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable, match="does not exist; create it"):
            await store.aclaim("k", "fp", LEASE)  # no table: its prepare fails
        await store.ainit_schema()
        claimed = await store.aclaim("k", "fp", LEASE)
        assert isinstance(claimed, Claimed)
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_without_prepared_statements_the_path_is_the_same(prefix: str) -> None:
    store = PostgresStore(f"{POSTGRES_URL}?prepare=false", table_prefix=prefix, pool_min=0)

    async def scenario() -> None:
        claimed = await store.aclaim("k", "fp", LEASE)
        assert isinstance(claimed, Claimed)
        assert await store.acomplete("k", claimed.token, response(b"\x00\xff"), TTL, TTL)
        record = await store.aget("k")
        assert record is not None
        assert record.response is not None
        assert record.response.body == b"\x00\xff"
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_a_loop_holds_at_most_pool_size_connections(prefix: str) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=2)
    seen: list[int] = []

    async def scenario() -> None:
        await store.aclaim("warm", "fp", LEASE)
        for _ in range(3):
            await asyncio.gather(*(store.aclaim(f"b{i}", "fp", LEASE) for i in range(60)))
            seen.append(len(backends_of(prefix)))
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()
    assert max(seen) == 2, seen


def test_a_dropped_connection_fails_what_was_in_flight_and_the_next_call_reconnects(
    prefix: str,
) -> None:
    store = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=1)

    async def scenario() -> None:
        first = await store.aclaim("a", "fp", LEASE)
        assert isinstance(first, Claimed)
        (pid,) = backends_of(prefix)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Terminated: the server process is gone before the next statement is sent.
            gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            for _ in range(10_000):
                row = admin.execute(gone, (pid,)).fetchone()
                if row is not None and row[0] == 0:
                    break
        with pytest.raises(StoreUnavailable):
            await store.acomplete("a", first.token, response(b"lost"), TTL, TTL)
        # The next call opens a new connection; nothing was written by the failed one.
        assert await store.acomplete("a", first.token, response(b"kept"), TTL, TTL)
        record = await store.aget("a")
        assert record is not None
        assert record.response is not None
        assert record.response.body == b"kept"
        await store.aclose()

    try:
        run(scenario())
    finally:
        store.close()


def test_batches_lock_in_key_order_and_never_deadlock(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two connections (two store objects) send batches that lock the same rows, submitted in
    # opposite orders. Each batch is one transaction holding its row locks until its Sync; in
    # submission order they would deadlock (the server aborts one after deadlock_timeout and
    # the batch is sent again statement by statement). Sent in key order, no batch fails.
    failed: list[list[Any]] = []
    settle = _pg_pipeline.Pipe._settle

    def counting(self: Any, batch: list[Any]) -> None:
        if len(batch) > 1 and any(_pg_pipeline._failed(entry.result) for entry in batch):
            failed.append(batch)
        settle(self, batch)

    monkeypatch.setattr(_pg_pipeline.Pipe, "_settle", counting)
    holder = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=1)
    left = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=1)
    right = PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0, pool_size=1)
    keys = [f"d{i}" for i in range(8)]
    marks = 0

    async def mark(store: PostgresStore, key: str) -> None:
        nonlocal marks
        # The watch statement: it marks an in-flight record waited on (an UPDATE: a row lock).
        assert await store._aone(store.sql.watch, {"id": key}) is not None
        marks += 1

    async def scenario() -> None:
        for key in keys:
            assert isinstance(await holder.aclaim(key, "fp", LEASE), Claimed)
        for _ in range(150):
            # One statement each first, so that the rest queue behind it as one batch.
            await asyncio.gather(
                mark(left, keys[0]),
                *(mark(left, k) for k in keys),
                mark(right, keys[-1]),
                *(mark(right, k) for k in reversed(keys)),
            )
        for store in (holder, left, right):
            await store.aclose()

    try:
        run(scenario())
    finally:
        for store in (holder, left, right):
            store.close()
    assert marks == 150 * 2 * (len(keys) + 1)
    assert failed == []

"""SPEC 14 housekeeping: a completed record's body goes at its TTL; the tombstone stays for the
retention window, then the whole record goes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from kit.store_claims import new_id
from kit.stores import FAR, FakeClock, StoreKit, rerun_when_stalled
from retrysafe._records import Claimed, State, StoredResponse
from retrysafe.stores.sqlite import TABLE, SQLiteStore

WAIT = 30.0  # bounds a hang only
BODY = StoredResponse(201, (("content-type", "application/json"),), b'{"id": 1}')


@rerun_when_stalled
def test_after_the_ttl_get_shows_a_tombstone_without_the_body(kit: StoreKit) -> None:
    id = new_id("hk")
    claimed = kit.store.claim(id, "fp", FAR * kit.tick)
    assert isinstance(claimed, Claimed)
    with kit.within(1.5):  # from before the completion to after the tombstone is seen
        with kit.within(0.5):  # ... and to after the live record is seen
            assert kit.store.complete(id, claimed.token, BODY, 0.5 * kit.tick, 1 * kit.tick)
            live = kit.store.get(id)
        kit.advance(1 * kit.tick)  # past the TTL (0.5), inside the retention (until 1.5)
        tomb = kit.store.get(id)
    assert live is not None
    assert live.response == BODY
    assert tomb is not None
    assert (tomb.state, tomb.response, tomb.fingerprint) == (State.TOMBSTONE, None, "fp")
    kit.advance(1 * kit.tick)  # past the retention
    assert kit.store.get(id) is None


def _rows(path: Path) -> list[tuple[str, str, bytes | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT id, state, body FROM {TABLE} ORDER BY id").fetchall()


def test_sqlite_purge_drops_lapsed_bodies_then_dead_rows(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "hk.db", clock=clock, purge_every=None)
    for id, ttl in (("a", 5.0), ("b", 50.0)):
        claimed = store.claim(id, "fp", 10)
        assert isinstance(claimed, Claimed)
        assert store.complete(id, claimed.token, BODY, ttl, 20.0)
    clock.advance(10)
    assert store.purge() == 0
    assert _rows(tmp_path / "hk.db") == [("a", "tombstone", None), ("b", "completed", BODY.body)]
    clock.advance(20)  # a: past TTL + retention; b: still live
    assert store.purge() == 1
    assert [r[0] for r in _rows(tmp_path / "hk.db")] == ["b"]
    # the key of a purged record is simply new again
    again = store.claim("a", "fp", 10)
    assert isinstance(again, Claimed)
    assert not again.expired_before
    store.close()


def test_sqlite_completions_purge_on_their_own(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "auto.db", clock=clock, purge_every=0.0)
    first = store.claim("old", "fp", 10)
    assert isinstance(first, Claimed)
    assert store.complete("old", first.token, BODY, 1.0, 1.0)
    clock.advance(5)
    second = store.claim("new", "fp", 10)
    assert isinstance(second, Claimed)
    assert store.complete("new", second.token, BODY, 100.0, 1.0)  # this completion purges
    assert [r[0] for r in _rows(tmp_path / "auto.db")] == ["new"]
    store.close()


def test_async_housekeeping_purges_inline_or_puts_it_off_while_a_writer_holds_the_gate(
    tmp_path: Path,
) -> None:
    """On the event loop the purge runs inline when the writer gate is free. When another
    writer holds it, housekeeping neither waits for it nor hands the purge to a thread that
    would: the purge is put off, and the next housekeeping does it (the purge is sized by the
    completions since the last one, which the put-off purge gives back)."""
    clock = FakeClock()
    path = tmp_path / "aauto.db"
    store = SQLiteStore(path, clock=clock, purge_every=3600.0)  # no periodic purge here

    async def scenario() -> tuple[list[str], list[str]]:
        claimed = await store.aclaim("old", "fp", 10)
        assert isinstance(claimed, Claimed)
        assert await store.acomplete("old", claimed.token, BODY, 1.0, 1.0)
        clock.advance(5)  # "old" is past its TTL and retention
        other = store.enter_gate()  # another writer, between its statements
        try:
            await asyncio.wait_for(store._ahousekeeping(), WAIT)
            kept = [r[0] for r in _rows(path)]
        finally:
            other.release()
        await asyncio.wait_for(store._ahousekeeping(), WAIT)
        return kept, [r[0] for r in _rows(path)]

    kept, after = asyncio.run(scenario())
    assert kept == ["old"]
    assert after == []
    store.close()

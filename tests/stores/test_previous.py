"""A claim that replaces a record says which (``Claimed.previous``), on every store.

Telemetry turns it into span events (an expired key run again, a takeover from a silent
holder): when the key was first used, when it expired or its lease lapsed, the previous fencing
token. Every store must report the same thing the in-memory model does.
"""

from __future__ import annotations

import uuid

import pytest

from kit.stores import FAR, StoreKit
from retrysafe._records import Claimed, StoredResponse

OK = StoredResponse(201, (), b"{}")
TIME = 1e-5  # stores keep microseconds


def test_a_takeover_reports_the_silent_holder(kit: StoreKit) -> None:
    store, tick = kit.store, kit.tick
    id = f"previous-{uuid.uuid4().hex}"
    first = store.claim(id, "fp", 1 * tick)
    assert isinstance(first, Claimed)
    assert first.previous is None  # a new key replaces nothing
    held = store.get(id)
    assert held is not None
    kit.advance(2 * tick)  # the holder went silent past its lease
    second = store.claim(id, "fp", FAR * tick)
    assert isinstance(second, Claimed)
    assert second.recovered
    was = second.previous
    assert was is not None
    assert was.token == first.token == held.token
    assert was.created_at == pytest.approx(held.created_at, abs=TIME)
    assert was.ended_at == pytest.approx(held.lease_until, abs=TIME)
    assert was.now >= was.ended_at
    assert was.silent_for == pytest.approx(was.now - was.ended_at + FAR * tick, abs=TIME)


def test_an_expired_key_reports_its_tombstone(kit: StoreKit) -> None:
    store, tick = kit.store, kit.tick
    id = f"previous-{uuid.uuid4().hex}"
    first = store.claim(id, "fp", FAR * tick)
    assert isinstance(first, Claimed)
    assert store.complete(id, first.token, OK, 1 * tick, FAR * tick)
    done = store.get(id)
    assert done is not None
    kit.advance(2 * tick)  # past the TTL, within retention: a tombstone
    again = store.claim(id, "fp", FAR * tick)
    assert isinstance(again, Claimed)
    assert again.expired_before
    was = again.previous
    assert was is not None
    assert was.token == first.token
    assert was.created_at == pytest.approx(done.created_at, abs=TIME)  # first used
    assert was.ended_at == pytest.approx(done.expires_at, abs=TIME)  # expired
    assert was.now >= was.ended_at
    assert was.silent_for is None


def test_a_key_past_its_retention_replaces_nothing(kit: StoreKit) -> None:
    store, tick = kit.store, kit.tick
    id = f"previous-{uuid.uuid4().hex}"
    first = store.claim(id, "fp", FAR * tick)
    assert isinstance(first, Claimed)
    assert store.complete(id, first.token, OK, 1 * tick, 1 * tick)
    kit.advance(3 * tick)  # TTL and retention both over: the key is new again
    again = store.claim(id, "fp", FAR * tick)
    assert isinstance(again, Claimed)
    assert not again.expired_before
    assert again.previous is None

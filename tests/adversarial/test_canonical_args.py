"""Canonical arguments, read as an attacker: distinct values never share a key (SPEC 29).

Without ``key=``, ``@idempotent`` keys a call on the RFC 8785 form of its arguments, so two
argument values that canonicalize alike would be one operation — the second caller would get
the first one's result. Numbers compare by value (``1`` and ``1.0``, as documented); every
other pair below must stay apart. And every int must have a form: ``2**53`` used to be
refused (one past the safe range, but not tagged), while ``2**53 + 1`` worked.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from kit.stores import StoreKit
from retrysafe.stores.memory import MemoryStore
from retrysafe.tools import idempotent

DISTINCT = [
    (True, 1),
    (False, 0),
    (None, 0),
    ("", None),
    ("1", 1),
    ("1", b"1"),
    (b"1", bytearray(b"1")),
    ([1, 2], (1, 2)),
    ([1], {1}),
    ({1}, frozenset({1})),
    ({"1": "a"}, {1: "a"}),
    ({"a": 1}, [["a", 1]]),
    ({"$bytes": "MQ=="}, b"1"),  # a dict shaped like a tag is still a dict
    ({"$int": str(2**53 + 1)}, 2**53 + 1),
    ({"$tuple": [1]}, (1,)),
    (2**53, 2**53 + 1),
    (2**53 - 1, 2**53),
    (-(2**53), -(2**53) - 1),
    (decimal.Decimal("1.0"), 1),
    (dt.datetime(2026, 1, 1, 9), dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)),
    ("é", "e\u0301"),  # NFC vs NFD: different strings
]


@pytest.mark.parametrize(("a", "b"), DISTINCT, ids=[f"{a!r}-vs-{b!r}" for a, b in DISTINCT])
def test_distinct_arguments_are_distinct_operations(a: Any, b: Any) -> None:
    """The canonical form does not depend on the store: one kind is enough here."""
    runs: list[Any] = []

    @idempotent(MemoryStore())
    def act(value: Any) -> int:
        runs.append(value)
        return len(runs)

    assert act(a) == 1
    assert act(b) == 2  # its own run, not a's result
    assert act(a) == 1  # replayed


@pytest.mark.parametrize("n", [2**53, -(2**53), 2**53 - 1, 2**64])
def test_every_int_has_a_canonical_form(kit: StoreKit, n: int) -> None:
    runs: list[int] = []

    @idempotent(kit.store)
    def credit(cents: int) -> int:
        runs.append(cents)
        return cents

    assert credit(n) == credit(n) == n
    assert runs == [n]

"""The default serializer round-trips results exactly, and argument trees are canonical."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.tools_models import Color, Counted, Invoice, Level, Mode, Opaque, Receipt
from retrysafe.errors import SerializationError
from retrysafe.tools._serializer import TaggedJSON, canonical_tree

codec = TaggedJSON()


def roundtrip(value: object) -> Any:
    return codec.loads(codec.dumps(value))


def same(a: object, b: object) -> bool:
    """Equal *and* of the same types all the way down (== alone says 1 == True == 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))  # type: ignore[arg-type]
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index, call-overload]
    if isinstance(a, dt.datetime | dt.time):
        return (
            a == b
            and a.fold == b.fold  # type: ignore[union-attr]
            and a.tzinfo == b.tzinfo  # type: ignore[union-attr]
            and a.replace(tzinfo=None) == b.replace(tzinfo=None)  # type: ignore[union-attr]
        )
    return a == b


@pytest.mark.parametrize(
    "value",
    [0, 0.0, -0.0, "", b"", [], (), {}, set(), frozenset(), False, None, bytearray(b"")],
    ids=repr,
)
def test_falsy_values_stay_distinct(value: object) -> None:
    assert same(roundtrip(value), value)


def test_special_floats_and_huge_ints() -> None:
    assert math.isnan(roundtrip(float("nan")))
    assert roundtrip(float("inf")) == math.inf
    assert roundtrip(-math.inf) == -math.inf
    assert roundtrip(10**40) == 10**40


def test_value_types_round_trip() -> None:
    paris = ZoneInfo("Europe/Paris")
    values = [
        dt.datetime(2026, 3, 29, 2, 30, tzinfo=paris),  # imaginary (spring-forward gap)
        dt.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=paris),  # ambiguous, second one
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=-5), "EST")),
        dt.datetime(2026, 1, 1, 8, 0, 0, 123456),
        dt.date(2026, 2, 28),
        dt.time(23, 59, 59, 1, tzinfo=dt.timezone(dt.timedelta(minutes=330))),
        dt.timedelta(days=-1, microseconds=5),
        Decimal("1.10"),
        Decimal("-0"),
        uuid.UUID("8e03978e-40d5-43e8-bc93-6894a57f9324"),
        Color.GREEN,
        Level.HIGH,
        Mode.FAST,
        {1: "int key", (1, 2): "tuple key", "s": {"nested": [(), {}]}},
    ]
    for value in values:
        assert same(roundtrip(value), value), value


def test_dataclass_round_trips_without_running_post_init_again() -> None:
    receipt = Receipt("o-1", Decimal("9.99"), dt.datetime(2026, 1, 1, tzinfo=dt.UTC), ("a",))
    back = roundtrip(receipt)
    assert back == receipt
    assert type(back) is Receipt
    assert type(back.tags) is tuple
    counted = Counted(5)
    assert counted.seen == 1
    again = roundtrip(counted)
    assert (again.value, again.seen) == (5, 1)


def test_pydantic_model_round_trips() -> None:
    receipt = Receipt("o-2", Decimal("1"), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    invoice = Invoice(
        number=7, total=Decimal("10.50"), lines=("a", "b"), issued=dt.date.today(), receipt=receipt
    )
    back = roundtrip(invoice)
    assert back == invoice
    assert type(back) is Invoice
    assert type(back.receipt) is Receipt


def test_unsupported_values_raise_a_clear_error() -> None:
    with pytest.raises(SerializationError, match=r"kit\.tools_models\.Opaque"):
        codec.dumps({"x": [Opaque()]})

    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match="module level"):
        codec.dumps(Local(1))
    with pytest.raises(SerializationError, match="not tagged JSON"):
        codec.loads(b"\xff")
    with pytest.raises(SerializationError, match="not tagged JSON"):
        codec.loads(b'{"$tuple": 5}')
    with pytest.raises(SerializationError, match="not a dataclass"):
        codec.loads(b'{"$dataclass": ["os:system", {"$dict": {}}]}')


def test_check_type_refuses_only_what_certainly_cannot_be_stored() -> None:
    for ok in (int, dict[str, Any], Receipt | None, list[Invoice], tuple[int, ...], Any, Color):
        codec.check_type(ok)
    for bad in (Opaque, list[Opaque], Opaque | None):
        with pytest.raises(SerializationError, match="Opaque"):
            codec.check_type(bad)


def test_canonical_tree_ignores_dict_and_set_order() -> None:
    def jcs(v: object) -> bytes:
        return bytes(rfc8785.dumps(canonical_tree(v)))

    assert jcs({"b": 1, "a": {3, 1, 2}}) == jcs({"a": {2, 3, 1}, "b": 1})
    assert jcs({2: "x", 1: "y"}) == jcs({1: "y", 2: "x"})
    assert jcs((1, 2)) != jcs([1, 2])
    assert jcs({"cents": 500}) == jcs({"cents": 500.0})  # numbers by value, as JSON has them
    assert jcs(True) != jcs(1)
    assert jcs(2**60) != jcs(2**60 + 1)  # beyond doubles: kept exact as tagged strings


# -- Hypothesis: anything built from the supported kinds comes back the same -------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
    | st.dates()
    | st.timedeltas()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.times(timezones=st.none() | st.just(dt.UTC))
    | st.sampled_from([Color.RED, Level.LOW, Mode.FAST])
)
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.dictionaries(hashable, inner, max_size=3)
        | st.frozensets(hashable, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_roundtrip_property(value: object) -> None:
    assert same(roundtrip(value), value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), values, max_size=4))
def test_canonical_tree_is_deterministic(arguments: dict[str, object]) -> None:
    reordered = dict(reversed(list(arguments.items())))
    assert rfc8785.dumps(canonical_tree(arguments)) == rfc8785.dumps(canonical_tree(reordered))

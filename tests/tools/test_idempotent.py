"""SPEC 28: ``@idempotent`` on sync and async functions, against every store kind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from kit.stores import StoreKit, rerun_when_stalled
from kit.tools_flavour import Flavour, both
from kit.tools_models import Invoice, Opaque, PaymentDeclined, Receipt
from kit.wakes import HANG, NEVER, WakeProbe
from retrysafe import current_key
from retrysafe._policy import Policy, storage_id
from retrysafe._records import State
from retrysafe.errors import (
    ConfigurationError,
    KeyMismatch,
    SerializationError,
    StillInFlight,
    StoreUnavailable,
    Unreplayable,
)
from retrysafe.stores.memory import MemoryStore
from retrysafe.tools import idempotent


class Ledger:
    """Counts executions and records the key each one saw."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.keys.append(current_key())

    @property
    def runs(self) -> int:
        return len(self.keys)


@both
def test_first_call_runs_then_replays(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def charge(order_id: str, amount: int) -> Receipt:
        ledger.hit()
        return Receipt(order_id, Decimal(amount) / 100, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    fn = idempotent(kit.store, key=lambda order_id, amount: order_id)(flavour.make(charge))
    first = flavour.call(fn, "o-1", 500)
    again = flavour.call(fn, "o-1", amount=500)
    assert first == again
    assert type(again) is Receipt
    assert ledger.runs == 1
    assert ledger.keys == ["o-1"]
    assert current_key() is None  # only set while the function runs


@both
@pytest.mark.parametrize("value", [0, None, "", False, [], {}, (), b""], ids=repr)
def test_falsy_results_are_replayed_not_rerun(kit: StoreKit, flavour: Flavour, value: Any) -> None:
    ledger = Ledger()

    def produce(n: int) -> Any:
        ledger.hit()
        return value

    fn = idempotent(kit.store)(flavour.make(produce))
    assert flavour.call(fn, 1) == value
    replayed = flavour.call(fn, 1)
    assert replayed == value
    assert type(replayed) is type(value)
    assert ledger.runs == 1


@both
def test_same_key_other_arguments_is_a_mismatch(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def charge(order_id: str, amount: int) -> int:
        ledger.hit()
        return amount

    fn = idempotent(kit.store, key=lambda order_id, amount: order_id)(flavour.make(charge))
    assert flavour.call(fn, "o-1", 500) == 500
    with pytest.raises(KeyMismatch) as info:
        flavour.call(fn, "o-1", 900)
    assert info.value.key == "o-1"
    assert flavour.call(fn, "o-1", 500) == 500  # the original still replays
    assert ledger.runs == 1


@both
def test_derived_key_follows_the_bound_arguments(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def send(to: str, body: dict[str, Any], urgent: bool = False) -> str:
        ledger.hit()
        return f"{to}:{len(body)}"

    fn = idempotent(kit.store)(flavour.make(send))
    flavour.call(fn, "a", {"x": 1, "y": 2})
    flavour.call(fn, to="a", body={"y": 2, "x": 1}, urgent=False)  # same call, other spelling
    assert ledger.runs == 1
    flavour.call(fn, "a", {"x": 1, "y": 2}, True)  # another operation
    flavour.call(fn, "b", {"x": 1, "y": 2})
    assert ledger.runs == 3
    assert len(set(ledger.keys)) == 3
    assert all(len(k or "") == 64 for k in ledger.keys)


@both
def test_exception_releases_so_a_retry_runs(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def flaky(n: int) -> int:
        ledger.hit()
        if ledger.runs == 1:
            raise ConnectionError("upstream reset")
        return n

    fn = idempotent(kit.store)(flavour.make(flaky))
    with pytest.raises(ConnectionError):
        flavour.call(fn, 7)
    assert flavour.call(fn, 7) == 7
    assert flavour.call(fn, 7) == 7
    assert ledger.runs == 2


@both
def test_listed_exceptions_are_stored_and_raised_again(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def pay(card: str) -> str:
        ledger.hit()
        raise PaymentDeclined(f"card {card} declined", 51)

    fn = idempotent(kit.store, store_exceptions=(PaymentDeclined,))(flavour.make(pay))
    for _ in range(2):
        with pytest.raises(PaymentDeclined) as info:
            flavour.call(fn, "4242")
        assert info.value.args == ("card 4242 declined", 51)
    assert ledger.runs == 1


@both
def test_unstorable_result_completes_unreplayable(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def make(n: int) -> Any:  # an annotation that cannot warn in advance
        ledger.hit()
        return Opaque()

    fn = idempotent(kit.store)(flavour.make(make))
    with pytest.raises(SerializationError, match="Opaque"):
        flavour.call(fn, 1)
    with pytest.raises(Unreplayable):  # the side effect ran once: never again
        flavour.call(fn, 1)
    assert ledger.runs == 1


@both
def test_validate_return_refuses_before_running(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def make(n: int) -> Opaque:
        ledger.hit()
        return Opaque()

    fn = idempotent(kit.store)(flavour.make(make))
    with pytest.raises(SerializationError, match="return annotation Opaque"):
        flavour.call(fn, 1)
    assert ledger.runs == 0
    unchecked = idempotent(kit.store, validate_return=False)(flavour.make(make))
    with pytest.raises(SerializationError):
        flavour.call(unchecked, 1)
    assert ledger.runs == 1


@both
def test_pydantic_results_replay(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def bill(n: int) -> Invoice:
        ledger.hit()
        return Invoice(number=n, total=Decimal("3.30"), lines=("x",), issued=dt.date(2026, 1, 2))

    fn = idempotent(kit.store)(flavour.make(bill))
    first = flavour.call(fn, 3)
    again = flavour.call(fn, 3)
    assert again == first
    assert type(again) is Invoice
    assert again.lines == ("x",)
    assert ledger.runs == 1


@both
@rerun_when_stalled
def test_ttl_expiry_runs_again(kit: StoreKit, flavour: Flavour) -> None:
    ledger = Ledger()

    def work(n: int) -> int:
        ledger.hit()
        return ledger.runs

    # A namespace of its own per attempt: a run again must not meet this one's record.
    namespace = f"ttl-expiry-{uuid.uuid4().hex}"
    fn = idempotent(kit.store, ttl=10 * kit.tick, namespace=namespace)(flavour.make(work))
    with kit.within(10):  # from before the completion to after the replay
        first = flavour.call(fn, 1)
        kit.advance(5 * kit.tick)
        replayed = flavour.call(fn, 1)
    assert (first, replayed) == (1, 1)
    kit.advance(6 * kit.tick)
    assert flavour.call(fn, 1) == 2


@both
def test_duplicate_in_flight_waits_then_gets_still_in_flight(
    kit: StoreKit, flavour: Flavour
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    fn = idempotent(kit.store, wait=0.2)(flavour.make(slow))
    thread, out = flavour.in_thread(fn, 1)
    assert started.wait(5)
    with pytest.raises(StillInFlight) as info:
        flavour.call(fn, 1)
    assert info.value.retry_after >= 1
    release.set()
    thread.join(10)
    assert out == [1]
    assert flavour.call(fn, 1) == 1


# Fake-clock stores only: on a real clock the live holder's heartbeat renews its lease as time
# passes, so it never lapses under a live holder (tests/stores/test_crash.py kills the holder).
@pytest.mark.parametrize("kit", ["memory", "sqlite"], indirect=True)
@both
def test_lapsed_lease_is_taken_over_and_the_late_writer_fenced(
    kit: StoreKit, flavour: Flavour
) -> None:
    ledger = Ledger()
    started, release = threading.Event(), threading.Event()

    def work(n: int) -> str:
        ledger.hit()
        if ledger.runs == 1:
            started.set()
            release.wait(10)
            return "stale"
        return "fresh"

    fn = idempotent(kit.store, lease=30 * kit.tick, wait=0.1)(flavour.make(work))
    thread, out = flavour.in_thread(fn, 1)
    assert started.wait(5)
    kit.advance(31 * kit.tick)  # the first holder "died": its lease lapsed
    assert flavour.call(fn, 1) == "fresh"  # taken over (outcome recovered)
    release.set()
    thread.join(10)
    assert out == ["stale"]  # it returns to its own caller, but its write is fenced out
    assert flavour.call(fn, 1) == "fresh"
    assert ledger.runs == 2
    assert ledger.keys[0] == ledger.keys[1]  # the re-run saw the same key


@both
def test_namespace_scopes_keys_and_names_the_operation(kit: StoreKit, flavour: Flavour) -> None:
    def one(order: str) -> int:
        return 1

    def two(order: str) -> int:
        return 2

    f1 = idempotent(kit.store, key=lambda order: order)(flavour.make(one))
    f2 = idempotent(kit.store, key=lambda order: order)(flavour.make(two))
    assert flavour.call(f1, "k") == 1  # same explicit key, other function: no collision
    assert flavour.call(f2, "k") == 2
    # A renamed function keeps its records by keeping its namespace: one operation.
    old = idempotent(kit.store, namespace="orders.charge")(flavour.make(one))
    renamed = idempotent(kit.store, namespace="orders.charge")(flavour.make(two))
    assert flavour.call(old, "k") == 1
    assert flavour.call(renamed, "k") == 1
    assert flavour.call(renamed, "other") == 2


def test_record_is_stored_under_a_hash_of_scope_and_key(kit: StoreKit) -> None:
    def charge(order: str) -> str:
        return order.upper()

    fn = idempotent(kit.store, key="fixed-key", namespace="payments")(charge)
    assert fn("a") == "A"
    record = kit.store.get(storage_id("function\0payments", "fixed-key"))
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.status == 200
    assert record.response.headers == (("content-type", "application/vnd.retrysafe.tagged+json"),)
    assert record.response.body == b'"A"'


def test_bad_configuration_and_arguments_are_refused(kit: StoreKit) -> None:
    def f(conn: object, n: int) -> int:
        return n

    with pytest.raises(SerializationError, match="ignore_args"):
        idempotent(kit.store)(f)(object(), 1)
    with pytest.raises(SerializationError, match="canonical"):
        idempotent(kit.store, ignore_args=("conn",))(lambda conn, n: n)(None, "\ud800")
    assert idempotent(kit.store, ignore_args=("conn",))(f)(object(), 1) == 1
    with pytest.raises(ConfigurationError, match="ignore_args"):
        idempotent(kit.store, ignore_args=("nope",))(f)
    with pytest.raises(ConfigurationError, match="non-empty string"):
        idempotent(kit.store, key=lambda conn, n: n)(f)(None, 1)
    with pytest.raises(TypeError):
        idempotent(kit.store, ignore_args=("conn",))(f)(1)  # missing argument: as Python says


def test_methods_key_on_the_instance(kit: StoreKit) -> None:
    """More in tests/adversarial/test_methods.py: the instance's identity is an argument."""

    class Service:
        def __init__(self, name: str) -> None:
            self.idempotency_id = name
            self.calls = 0

        @idempotent(kit.store)
        def refund(self, order: str) -> str:
            self.calls += 1
            return order

    a, b = Service("a"), Service("b")
    assert a.refund("o") == b.refund("o") == a.refund("o") == "o"
    assert (a.calls, b.calls) == (1, 1)


@both
def test_a_waiter_stops_waiting_when_the_lease_lapses(
    kit: StoreKit, flavour: Flavour, wakes: WakeProbe
) -> None:
    """``watch`` returns at the lease's end, so a duplicate takes over a dead holder's claim
    after the lease rather than after the whole wait bound (the stores' ``lease_left``)."""
    claimed = kit.store.claim("dead-holder", "fp", 2 * kit.tick)
    assert claimed is not None
    kit.advance(3 * kit.tick)
    if flavour.is_async:
        thread = threading.Thread(
            target=asyncio.run, args=(kit.store.awatch("dead-holder", NEVER),), daemon=True
        )
    else:
        thread = threading.Thread(target=kit.store.watch, args=("dead-holder", NEVER), daemon=True)
    thread.start()  # no timeout: only the lapsed lease can end this watch
    thread.join(HANG)
    assert not thread.is_alive(), "the waiter outlived the lease"
    assert wakes.parked == 0  # at once: the lease had lapsed, there was nothing to wait for


class Reversed:
    """A custom serializer: JSON, stored reversed, under its own media type."""

    media_type = "application/x-reversed-json"

    def dumps(self, value: object) -> bytes:
        return json.dumps(value).encode()[::-1]

    def loads(self, data: bytes) -> object:
        return json.loads(data[::-1])


@both
def test_a_custom_serializer_is_used_and_its_media_type_checked(
    kit: StoreKit, flavour: Flavour
) -> None:
    def pick(n: int) -> list[int]:
        return [n, n]

    custom = idempotent(kit.store, namespace="pick", serializer=Reversed())(flavour.make(pick))
    assert flavour.call(custom, 2) == [2, 2]
    assert flavour.call(custom, 2) == [2, 2]
    record = kit.store.get(storage_id("function\0pick", custom_key(2)))
    assert record is not None
    assert record.response is not None
    assert record.response.body == b"]2 ,2["
    default = idempotent(kit.store, namespace="pick")(flavour.make(pick))
    with pytest.raises(SerializationError, match="x-reversed-json"):
        flavour.call(default, 2)  # never decoded by the wrong serializer


def custom_key(n: int) -> str:
    from retrysafe._fingerprint import call_fingerprint
    from retrysafe.tools._serializer import canonical_tree

    return call_fingerprint("pick", canonical_tree({"n": n}))


class DownStore(MemoryStore):
    """A store that cannot be reached (what every backend raises when its server is down)."""

    def claim(self, id: str, fingerprint: str, lease: float) -> Any:
        raise StoreUnavailable("store is down")

    async def aclaim(self, id: str, fingerprint: str, lease: float) -> Any:
        raise StoreUnavailable("store is down")


@both
def test_store_down_fails_closed_unless_fail_open(flavour: Flavour) -> None:
    ran: list[str | None] = []

    def work(n: int) -> int:
        ran.append(current_key())
        return n

    closed = idempotent(DownStore())(flavour.make(work))
    with pytest.raises(StoreUnavailable):
        flavour.call(closed, 1)
    assert ran == []
    opened = idempotent(DownStore(), policy=Policy(fail_open=True))(flavour.make(work))
    assert flavour.call(opened, 1) == 1
    assert len(ran) == 1
    assert ran[0] is not None  # still keyed, so downstream calls carry a stable key


async def test_a_cancelled_call_releases_its_claim(kit: StoreKit) -> None:
    runs: list[int] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    @idempotent(kit.store, wait=0.1)
    async def slow(n: int) -> int:
        runs.append(n)
        entered.set()
        await gate.wait()
        return n

    call = asyncio.create_task(slow(1))
    # Once the body runs (a fixed timeout could fire while a loaded PostgreSQL still claims),
    # the caller gives up: the task is cancelled.
    await entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    gate.set()
    assert await slow(1) == 1  # released, so the retry runs (no StillInFlight, no wait)
    assert runs == [1, 1]

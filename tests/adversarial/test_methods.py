"""``@idempotent`` on methods: two instances never share one result (security issue, item 2).

``self`` used to be dropped from the key, so ``alice.withdraw(30)`` and ``bob.withdraw(30)``
were one operation: bob got alice's result and his withdrawal never ran. Now a method's
instance says who it is (``idempotency_id``) and that identity is one of the call's canonical
arguments; an instance that does not say is refused before anything runs. Each test runs on
every store kind (the ``kit`` fixture), including a race of alice and bob on two threads.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kit.stores import StoreKit
from retrysafe.errors import InstanceIdentityRequired, KeyMismatch
from retrysafe.tools import agent_run, idempotent, idempotent_tool


class Bank:
    """The side effect: a balance per account, and how many withdrawals really ran."""

    def __init__(self) -> None:
        self.balances = {"alice": 100, "bob": 100}
        self.runs: list[str] = []
        self.lock = threading.Lock()

    def withdraw(self, who: str, cents: int) -> dict[str, Any]:
        with self.lock:
            self.runs.append(who)
            self.balances[who] -= cents
            return {"account": who, "balance": self.balances[who]}


def accounts(kit: StoreKit, bank: Bank) -> type:
    class Account:
        def __init__(self, number: str) -> None:
            self.number = number

        @property
        def idempotency_id(self) -> str:
            return self.number

        @idempotent(kit.store)
        def withdraw(self, cents: int) -> dict[str, Any]:
            return bank.withdraw(self.number, cents)

    return Account


def test_two_instances_with_equal_arguments_are_two_operations(kit: StoreKit) -> None:
    bank = Bank()
    account = accounts(kit, bank)
    alice, bob = account("alice"), account("bob")
    assert alice.withdraw(30) == {"account": "alice", "balance": 70}
    assert bob.withdraw(30) == {"account": "bob", "balance": 70}  # his own, not alice's
    assert alice.withdraw(30) == {"account": "alice", "balance": 70}  # a retry: replayed
    assert account("bob").withdraw(30) == {"account": "bob", "balance": 70}  # same id: replayed
    assert sorted(bank.runs) == ["alice", "bob"]
    assert bank.balances == {"alice": 70, "bob": 70}


def test_alice_and_bob_racing_on_two_threads_both_run_once(kit: StoreKit) -> None:
    bank = Bank()
    account = accounts(kit, bank)
    start = threading.Barrier(4)
    results: dict[int, Any] = {}

    def client(n: int, who: str) -> None:
        start.wait(timeout=30)
        try:
            results[n] = account(who).withdraw(30)
        except BaseException as exc:
            results[n] = exc

    threads = [
        threading.Thread(target=client, args=(n, who))
        for n, who in enumerate(["alice", "bob", "alice", "bob"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert results[0] == results[2] == {"account": "alice", "balance": 70}
    assert results[1] == results[3] == {"account": "bob", "balance": 70}
    assert sorted(bank.runs) == ["alice", "bob"]


def test_an_instance_that_does_not_say_who_it_is_is_refused_before_running(
    kit: StoreKit,
) -> None:
    runs: list[int] = []

    class Wallet:
        @idempotent(kit.store)
        def pay(self, cents: int) -> int:
            runs.append(cents)
            return cents

    with pytest.raises(InstanceIdentityRequired) as refused:
        Wallet().pay(5)
    message = str(refused.value)
    assert "idempotency_id" in message
    assert "ignore_args=('self',)" in message
    assert runs == []

    with pytest.raises(InstanceIdentityRequired):  # a bound method: refused at decoration
        idempotent(kit.store)(Wallet().pay)


def test_saying_instances_are_one_operation_shares_on_purpose(kit: StoreKit) -> None:
    runs: list[int] = []

    class Service:  # stateless: any instance does the same thing
        @idempotent(kit.store, ignore_args=("self",))
        def notify(self, order: str) -> str:
            runs.append(1)
            return order

    assert Service().notify("o-1") == Service().notify("o-1") == "o-1"
    assert runs == [1]


def test_an_explicit_key_shared_by_two_instances_is_a_mismatch_not_a_silent_replay(
    kit: StoreKit,
) -> None:
    bank = Bank()

    class Account:
        def __init__(self, number: str) -> None:
            self.idempotency_id = number

        @idempotent(kit.store, key=lambda self, order, cents: order)
        def withdraw(self, order: str, cents: int) -> dict[str, Any]:
            return bank.withdraw(self.idempotency_id, cents)

        @idempotent(kit.store, key=lambda self, order, cents: f"{self.idempotency_id}/{order}")
        def withdraw_keyed(self, order: str, cents: int) -> dict[str, Any]:
            return bank.withdraw(self.idempotency_id, cents)

    Account("alice").withdraw("o-1", 30)
    with pytest.raises(KeyMismatch):  # the key= ignores self: bob is told, not answered
        Account("bob").withdraw("o-1", 30)
    assert Account("bob").withdraw_keyed("o-1", 30) == {"account": "bob", "balance": 70}
    assert bank.runs == ["alice", "bob"]


def test_async_methods_too(kit: StoreKit) -> None:
    bank = Bank()

    class Account:
        def __init__(self, number: str) -> None:
            self.idempotency_id = number

        @idempotent(kit.store)
        async def withdraw(self, cents: int) -> dict[str, Any]:
            await asyncio.sleep(0)
            return bank.withdraw(self.idempotency_id, cents)

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(Account("alice").withdraw(30), Account("bob").withdraw(30))
        )

    assert asyncio.run(both()) == [
        {"account": "alice", "balance": 70},
        {"account": "bob", "balance": 70},
    ]
    assert sorted(bank.runs) == ["alice", "bob"]


def test_classmethods_are_told_apart_by_class_and_staticmethods_by_arguments(
    kit: StoreKit,
) -> None:
    runs: list[str] = []

    class Base:
        @classmethod
        @idempotent(kit.store)
        def open(cls, owner: str) -> str:
            runs.append(f"open {cls.__name__}")
            return cls.__name__

        @idempotent(kit.store)  # above the descriptor works as well
        @classmethod
        def close(cls, owner: str) -> str:
            runs.append(f"close {cls.__name__}")
            return cls.__name__

        @idempotent(kit.store)
        @staticmethod
        def audit(owner: str) -> str:
            runs.append("audit")
            return owner

    class Savings(Base):
        pass

    assert (Base.open("a"), Savings.open("a"), Base.open("a")) == ("Base", "Savings", "Base")
    assert (Base.close("a"), Savings.close("a")) == ("Base", "Savings")
    assert Base.audit("a") == Savings().audit("a") == "a"  # no receiver: one operation
    assert runs == ["open Base", "open Savings", "close Base", "close Savings", "audit"]


def test_idempotent_tool_on_methods(kit: StoreKit) -> None:
    bank = Bank()

    class Teller:
        def __init__(self, number: str) -> None:
            self.idempotency_id = number

        @idempotent_tool(kit.store, name="withdraw")
        def withdraw(self, cents: int) -> dict[str, Any]:
            return bank.withdraw(self.idempotency_id, cents)

    class Anonymous:  # its own tool name: one name names one function per run
        @idempotent_tool(kit.store, name="anonymous_withdraw")
        def withdraw(self, cents: int) -> int:
            return cents

    with agent_run("run-1"):
        assert Teller("alice").withdraw(30) == {"account": "alice", "balance": 70}
        assert Teller("bob").withdraw(30) == {"account": "bob", "balance": 70}
        assert Teller("alice").withdraw(30) == {"account": "alice", "balance": 70}
        with pytest.raises(InstanceIdentityRequired):
            Anonymous().withdraw(30)
    assert bank.runs == ["alice", "bob"]


def test_bound_methods_handed_to_a_decorator(kit: StoreKit) -> None:
    bank = Bank()

    class Account:
        def __init__(self, number: str) -> None:
            self.idempotency_id = number

        def withdraw(self, cents: int) -> dict[str, Any]:
            return bank.withdraw(self.idempotency_id, cents)

    for_alice = idempotent(kit.store)(Account("alice").withdraw)
    for_bob = idempotent(kit.store)(Account("bob").withdraw)
    assert for_alice(30) == {"account": "alice", "balance": 70}
    assert for_bob(30) == {"account": "bob", "balance": 70}
    assert for_alice(30) == {"account": "alice", "balance": 70}
    assert bank.runs == ["alice", "bob"]


def test_an_identity_without_a_canonical_form_is_refused(kit: StoreKit) -> None:
    class Account:
        idempotency_id = object()  # an address, different in every process

        @idempotent(kit.store)
        def withdraw(self, cents: int) -> int:
            return cents

    with pytest.raises(InstanceIdentityRequired, match="plain data"):
        Account().withdraw(1)

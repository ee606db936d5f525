"""SPEC 29: ``@idempotent_tool`` keys come from the durable run, the step, the tool and args."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kit.stores import StoreKit
from kit.tools_flavour import Flavour, both
from retrysafe import current_key
from retrysafe._fingerprint import canonical_json
from retrysafe.errors import AgentRunRequired, ConfigurationError
from retrysafe.tools import agent_run, agent_step, current_run, idempotent_tool
from retrysafe.tools._decorators import tool_key
from retrysafe.tools._serializer import canonical_tree


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def hit(self, what: str) -> None:
        with self.lock:
            self.seen.append((what, current_key()))


def tools(kit: StoreKit, flavour: Flavour, calls: Calls, version: str = "1") -> Any:
    def send_refund(customer: str, cents: int) -> dict[str, Any]:
        calls.hit(f"refund {customer} {cents}")
        return {"customer": customer, "cents": cents, "n": len(calls.seen)}

    def send_email(to: str) -> str:
        calls.hit(f"email {to}")
        return f"sent to {to}"

    deco = idempotent_tool(kit.store, version=version)
    return deco(flavour.make(send_refund)), deco(flavour.make(send_email))


@both
def test_outside_agent_run_refuses_and_runs_nothing(kit: StoreKit, flavour: Flavour) -> None:
    calls = Calls()
    refund, _ = tools(kit, flavour, calls)
    with pytest.raises(AgentRunRequired, match="agent_run"):
        flavour.call(refund, "cus_1", 500)
    assert calls.seen == []


@both
def test_repeats_in_one_run_are_answered_from_the_store(kit: StoreKit, flavour: Flavour) -> None:
    calls = Calls()
    refund, email = tools(kit, flavour, calls)
    with agent_run("run-7f3a"):
        first = flavour.call(refund, "cus_1", 500)
        assert flavour.call(refund, cents=500, customer="cus_1") == first  # a turn retry
        flavour.call(email, "a@example.com")
        flavour.call(email, "a@example.com")
    assert [what for what, _ in calls.seen] == ["refund cus_1 500", "email a@example.com"]


@both
def test_keys_ignore_call_order_so_replanning_cannot_shift_them(
    kit: StoreKit, flavour: Flavour
) -> None:
    calls = Calls()
    refund, email = tools(kit, flavour, calls)
    with agent_run("run-a"):
        flavour.call(refund, "cus_1", 500)
        flavour.call(email, "x@example.com")
    keys_first = dict(calls.seen)
    calls.seen.clear()
    # A re-planned resume of the same run: other order, plus a new call in front.
    with agent_run("run-a"):
        flavour.call(email, "new@example.com")
        flavour.call(email, "x@example.com")
        flavour.call(refund, "cus_1", 500)
    assert [what for what, _ in calls.seen] == ["email new@example.com"]
    tree = canonical_tree({"customer": "cus_1", "cents": 500})
    expected = tool_key("run-a", (), "send_refund", "1", tree)
    assert keys_first["refund cus_1 500"] == expected


@both
def test_other_runs_steps_and_versions_are_other_operations(
    kit: StoreKit, flavour: Flavour
) -> None:
    calls = Calls()
    refund, _ = tools(kit, flavour, calls)
    refund_v2, _ = tools(kit, flavour, calls, version="2")
    with agent_run("run-1"):
        flavour.call(refund, "cus_1", 500)
        with agent_step("second refund"):  # a deliberate repeat names another step
            flavour.call(refund, "cus_1", 500)
            flavour.call(refund, "cus_1", 500)
            with agent_step("inner"):
                flavour.call(refund, "cus_1", 500)
        flavour.call(refund_v2, "cus_1", 500)
    with agent_run("run-2"):
        flavour.call(refund, "cus_1", 500)
    keys = [key for _, key in calls.seen]
    assert len(keys) == 5
    assert len(set(keys)) == 5


@both
def test_current_key_is_the_tool_key(kit: StoreKit, flavour: Flavour) -> None:
    calls = Calls()
    refund, _ = tools(kit, flavour, calls)
    with agent_run("run-k"), agent_step("billing"):
        flavour.call(refund, "cus_9", 1)
    tree = canonical_tree({"customer": "cus_9", "cents": 1})
    assert calls.seen[0][1] == tool_key("run-k", ("billing",), "send_refund", "1", tree)
    assert current_key() is None


def test_tool_key_hashes_the_canonical_arguments() -> None:
    tree = canonical_tree({"b": 2, "a": 1})
    key = tool_key("r", (), "t", "1", tree)
    assert key == tool_key("r", (), "t", "1", canonical_tree({"a": 1, "b": 2}))
    assert len(key) == 64
    assert canonical_json(tree) == b'{"$dict":{"a":1,"b":2}}'
    # Step paths are structured, not joined strings: ("a/b",) is not ("a", "b").
    assert tool_key("r", ("a/b",), "t", "1", tree) != tool_key("r", ("a", "b"), "t", "1", tree)


def test_nesting_rules() -> None:
    assert current_run() is None
    with agent_run("outer") as outer:
        assert outer.run_id == "outer"
        with agent_step("s1"):
            with agent_run("outer") as same:  # same id: a no-op, steps stay
                assert same.steps == ("s1",)
            with agent_run("outer/sub") as sub:  # another id: a separate run, no steps
                assert sub.steps == ()
                assert sub.run_id == "outer/sub"
            assert current_run() == outer.__class__("outer", ("s1",))
        assert current_run() == outer
    assert current_run() is None
    with pytest.raises(AgentRunRequired):
        agent_step("orphan").__enter__()
    with pytest.raises(ConfigurationError):
        agent_run("")
    with pytest.raises(ConfigurationError):
        agent_step(None)  # type: ignore[arg-type]


async def test_async_forms_follow_tasks(kit: StoreKit) -> None:
    ran: list[str | None] = []

    @idempotent_tool(kit.store)
    async def lookup(q: str) -> str:
        ran.append(current_key())
        await asyncio.sleep(0)
        return q.upper()

    async with agent_run("run-async"), agent_step("search"):
        results = await asyncio.gather(*(asyncio.create_task(lookup("x")) for _ in range(5)))
    assert results == ["X"] * 5
    assert len(ran) == 1
    with pytest.raises(AgentRunRequired):
        await lookup("x")


def _search_in(module: str, calls: Calls) -> Any:
    """A ``search`` tool function as if defined in ``module`` (two modules, one tool name)."""

    def search(query: str) -> str:
        calls.hit(f"{module} {query}")
        return f"{module} results for {query}"

    search.__module__ = module
    search.__qualname__ = "search"
    return search


@both
def test_two_functions_under_one_tool_name_in_a_run_are_refused_before_running(
    kit: StoreKit, flavour: Flavour
) -> None:
    calls = Calls()
    deco = idempotent_tool(kit.store)
    web = deco(flavour.make(_search_in("app.web", calls)))
    files = deco(flavour.make(_search_in("app.files", calls)))
    with agent_run("run-names"):
        assert flavour.call(web, "q") == "app.web results for q"
        # Same run, same step, same tool name, same arguments: without the check this call
        # would be answered with the web search's stored result.
        with pytest.raises(ConfigurationError, match=r"'search' names two functions") as err:
            flavour.call(files, "q")
        assert "app.web.search and app.files.search" in str(err.value)
        assert "name='files_search'" in str(err.value)
        assert flavour.call(web, "q") == "app.web results for q"  # the first keeps working
    assert calls.seen[0][0] == "app.web q"
    assert [what for what, _ in calls.seen] == ["app.web q"]  # files never ran
    with agent_run("run-other"):  # another run: the other function may own the name there
        assert flavour.call(files, "q") == "app.files results for q"


@both
def test_one_function_decorated_twice_owns_its_name_once(kit: StoreKit, flavour: Flavour) -> None:
    calls = Calls()
    refund, _ = tools(kit, flavour, calls)
    again, _ = tools(kit, flavour, calls)  # decorated twice: still one function, no conflict
    with agent_run("run-threads") as run:
        flavour.call(refund, "cus_1", 100)
        flavour.call(again, "cus_1", 100)
        assert run.tools == {"send_refund": f"{__name__}.tools.<locals>.send_refund"}
    assert len(calls.seen) == 1

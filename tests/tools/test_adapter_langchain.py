"""SPEC 30: LangChain tools, invoked through LangChain's own tool-calling API (``invoke``).

A LangGraph tool node re-run (a resumed graph re-executes the node) and a retried agent turn
both call the tool again with a new ``tool_call_id``; the body must run once.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest

from kit.tools_flavour import need

need("langchain_core")

from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import InjectedToolCallId, StructuredTool, tool  # noqa: E402

from retrysafe import current_key  # noqa: E402
from retrysafe.errors import AgentRunRequired, ConfigurationError  # noqa: E402
from retrysafe.stores.memory import MemoryStore  # noqa: E402
from retrysafe.tools import agent_run, agent_step  # noqa: E402
from retrysafe.tools.adapters import langchain as lc  # noqa: E402


def call(call_id: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": "send_refund", "args": args}


@pytest.fixture
def ledger() -> list[str | None]:
    return []


@pytest.fixture
def refund(ledger: list[str | None]) -> Any:
    @tool
    def send_refund(
        customer: str, cents: int, tool_call_id: Annotated[str, InjectedToolCallId]
    ) -> str:
        """Refund a customer."""
        ledger.append(current_key())
        return f"re_{len(ledger)} {customer} {cents}"

    return lc.protect(send_refund, MemoryStore())


def test_schema_and_name_are_unchanged(refund: Any) -> None:
    assert refund.name == "send_refund"
    assert refund.description == "Refund a customer."
    assert set(refund.tool_call_schema.model_json_schema()["properties"]) == {"customer", "cents"}


def test_node_rerun_with_new_call_ids_runs_once(refund: Any, ledger: list[str | None]) -> None:
    def tool_node(call_id: str) -> ToolMessage:  # what a LangGraph ToolNode does per call
        message = refund.invoke(call(call_id, customer="cus_1", cents=500))
        assert isinstance(message, ToolMessage)
        return message

    with agent_run("thread-42"):
        first = tool_node("call_A")
        again = tool_node("call_B")  # the graph resumed and re-ran the node
    assert first.content == again.content == "re_1 cus_1 500"
    assert (first.tool_call_id, again.tool_call_id) == ("call_A", "call_B")
    assert len(ledger) == 1


def test_steps_and_plain_invoke(refund: Any, ledger: list[str | None]) -> None:
    with agent_run("thread-43"):
        assert refund.invoke(call("c1", customer="x", cents=1)).content == "re_1 x 1"
        with agent_step("second refund"):
            assert refund.invoke(call("c2", customer="x", cents=1)).content == "re_2 x 1"
    assert len(set(ledger)) == 2
    with pytest.raises(AgentRunRequired):
        refund.invoke(call("c3", customer="x", cents=1))


async def test_async_tools(ledger: list[str | None]) -> None:
    async def lookup(order: str) -> dict[str, Any]:
        """Look up an order."""
        ledger.append(current_key())
        return {"order": order, "status": "shipped"}

    protected = lc.protect(StructuredTool.from_function(coroutine=lookup), MemoryStore())
    async with agent_run("thread-async"):
        results = [await protected.ainvoke({"order": "o-1"}) for _ in range(3)]
    assert results == [{"order": "o-1", "status": "shipped"}] * 3
    assert len(ledger) == 1


def test_refuses_what_it_cannot_wrap() -> None:
    with pytest.raises(ConfigurationError):
        lc.protect(object(), MemoryStore())

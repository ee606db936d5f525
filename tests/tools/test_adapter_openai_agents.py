"""SPEC 30: OpenAI Agents SDK function tools, driven by the SDK's own Runner and ScriptedModel.

No model and no network: ``agents.testing.ScriptedModel`` plays the model's turns, so the
tool is called through the SDK's real tool-calling path, with a fresh provider call id on
every turn - exactly what an Agents-SDK turn retry looks like.
"""

from __future__ import annotations

from typing import Any

import pytest

from kit.tools_flavour import need

need("agents")

from agents import Agent, RunContextWrapper, Runner, UserError, set_tracing_disabled  # noqa: E402
from agents import function_tool as sdk_function_tool  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from retrysafe import current_key  # noqa: E402
from retrysafe.errors import AgentRunRequired  # noqa: E402
from retrysafe.stores.memory import MemoryStore  # noqa: E402
from retrysafe.tools import agent_run  # noqa: E402
from retrysafe.tools.adapters import openai_agents  # noqa: E402

set_tracing_disabled(True)  # no exporter, no network


def scripted(call_id: str, arguments: dict[str, Any]) -> ScriptedModel:
    return ScriptedModel(
        [
            [function_call("send_refund", arguments, call_id=call_id)],
            [assistant_message("done")],
        ]
    )


def outputs(result: Any) -> list[Any]:
    return [item.output for item in result.new_items if item.type == "tool_call_output_item"]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def refund_tool(store: MemoryStore, ledger: list[str | None]) -> Any:
    @openai_agents.function_tool(store)
    def send_refund(ctx: RunContextWrapper[Any], customer: str, cents: int) -> dict[str, Any]:
        """Refund a customer.

        Args:
            customer: the customer id.
            cents: the amount.
        """
        ledger.append(current_key())
        return {"refund": f"re_{len(ledger)}", "customer": customer, "cents": cents}

    return send_refund


async def test_turn_retry_with_a_new_call_id_runs_the_tool_once(store: MemoryStore) -> None:
    ledger: list[str | None] = []
    tool = refund_tool(store, ledger)
    args = {"customer": "cus_1", "cents": 500}
    async with agent_run("run-agents"):
        first = await Runner.run(Agent("a", tools=[tool], model=scripted("call_A", args)), "go")
        # The framework retries the whole turn; the model mints another tool-call id.
        again = await Runner.run(Agent("a", tools=[tool], model=scripted("call_B", args)), "go")
    assert outputs(first) == outputs(again)
    assert len(outputs(first)) == 1
    assert len(ledger) == 1
    assert ledger[0] is not None


async def test_schema_is_what_the_sdk_builds(store: MemoryStore) -> None:
    def send_refund(ctx: RunContextWrapper[Any], customer: str, cents: int) -> dict[str, Any]:
        """Refund a customer."""
        return {}

    plain = sdk_function_tool(send_refund)
    wrapped = openai_agents.function_tool(store)(send_refund)
    assert wrapped.name == plain.name == "send_refund"
    assert wrapped.params_json_schema == plain.params_json_schema
    assert wrapped.description == plain.description


async def test_outside_agent_run_the_tool_refuses(store: MemoryStore) -> None:
    ledger: list[str | None] = []
    tool = openai_agents.function_tool(store, failure_error_function=None)(_bare(ledger))
    agent = Agent("a", tools=[tool], model=scripted("call_X", {"customer": "c", "cents": 1}))
    with pytest.raises(UserError) as info:  # the SDK wraps what a tool raised
        await Runner.run(agent, "go")
    assert isinstance(info.value.__cause__, AgentRunRequired)
    assert ledger == []


def _bare(ledger: list[str | None]) -> Any:
    def send_refund(customer: str, cents: int) -> str:
        ledger.append(current_key())
        return "ok"

    return send_refund


async def test_protect_wraps_an_existing_function_tool(store: MemoryStore) -> None:
    ledger: list[str | None] = []

    @sdk_function_tool(failure_error_function=None)
    def send_refund(customer: str, cents: int) -> str:
        """Refund a customer."""
        ledger.append(customer)
        return f"refunded {cents} to {customer}"

    tool = openai_agents.protect(send_refund, store)
    assert tool.params_json_schema == send_refund.params_json_schema
    args = {"customer": "cus_2", "cents": 300}
    async with agent_run("run-protect"):
        first = await Runner.run(Agent("a", tools=[tool], model=scripted("c1", args)), "go")
        again = await Runner.run(Agent("a", tools=[tool], model=scripted("c2", args)), "go")
    assert outputs(first) == outputs(again) == ["refunded 300 to cus_2"]
    assert ledger == ["cus_2"]

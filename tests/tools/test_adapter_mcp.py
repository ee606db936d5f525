"""SPEC 30: MCP server tools, called through a real MCP client session (in-process transport).

The durable run id travels in the request's ``_meta``; the tool's input schema is what MCP
builds for the bare function; read-only and idempotent tools are left alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from kit.tools_flavour import need

need("mcp")

from mcp import Client  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp_types import ToolAnnotations  # noqa: E402

from retrysafe import current_key  # noqa: E402
from retrysafe.stores.memory import MemoryStore  # noqa: E402
from retrysafe.tools import agent_run  # noqa: E402
from retrysafe.tools.adapters import mcp as retrysafe_mcp  # noqa: E402

RUN = {retrysafe_mcp.RUN_ID_META: "run-mcp-1"}


def text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(block.text for block in result.content)


@pytest.fixture
def ledger() -> list[str | None]:
    return []


@pytest.fixture
def server(ledger: list[str | None]) -> MCPServer:
    server = MCPServer("payments")
    store = MemoryStore()

    @retrysafe_mcp.tool(server, store)
    async def send_refund(customer: str, cents: int) -> str:
        """Refund a customer."""
        ledger.append(current_key())
        return f"re_{len(ledger)} {customer} {cents}"

    @retrysafe_mcp.tool(server, store)
    def charge(customer: str, cents: int, ctx: Context) -> str:
        """Charge a customer (a sync tool that takes MCP's context itself)."""
        assert isinstance(ctx, Context)
        ledger.append(current_key())
        return f"ch_{len(ledger)}"

    @retrysafe_mcp.tool(server, store, annotations=ToolAnnotations(readOnlyHint=True))
    def balance(customer: str) -> str:
        """Read a balance: safe to repeat, so not wrapped."""
        ledger.append(current_key())
        return "42"

    return server


async def test_schemas_are_unchanged(server: MCPServer) -> None:
    bare = MCPServer("bare")

    @bare.tool()
    async def send_refund(customer: str, cents: int) -> str:
        """Refund a customer."""
        return ""

    @bare.tool()
    def charge(customer: str, cents: int, ctx: Context) -> str:
        """Charge a customer (a sync tool that takes MCP's context itself)."""
        return ""

    async with Client(server) as ours, Client(bare) as theirs:
        mine = {t.name: t for t in (await ours.list_tools()).tools}
        plain = {t.name: t for t in (await theirs.list_tools()).tools}
    for name in ("send_refund", "charge"):
        assert mine[name].input_schema == plain[name].input_schema
        assert mine[name].description == plain[name].description


async def test_retried_calls_with_the_run_in_meta_run_once(
    server: MCPServer, ledger: list[str | None]
) -> None:
    args = {"customer": "cus_1", "cents": 500}
    async with Client(server) as client:
        first = text(await client.call_tool("send_refund", args, meta=RUN))
        again = text(await client.call_tool("send_refund", args, meta=RUN))
        other_run = text(
            await client.call_tool("send_refund", args, meta={retrysafe_mcp.RUN_ID_META: "run-2"})
        )
        charged = [text(await client.call_tool("charge", args, meta=RUN)) for _ in range(2)]
    assert first == again == "re_1 cus_1 500"
    assert other_run == "re_2 cus_1 500"
    assert charged == ["ch_3", "ch_3"]
    assert len(ledger) == 3


async def test_without_a_run_the_call_is_refused(
    server: MCPServer, ledger: list[str | None]
) -> None:
    async with Client(server) as client:
        result = await client.call_tool("send_refund", {"customer": "c", "cents": 1})
    assert result.is_error
    assert ledger == []


async def test_an_enclosing_agent_run_applies_in_process(
    server: MCPServer, ledger: list[str | None]
) -> None:
    async with agent_run("run-in-process"), Client(server) as client:
        results = [
            text(await client.call_tool("send_refund", {"customer": "c", "cents": 2}))
            for _ in range(2)
        ]
    assert results == ["re_1 c 2"] * 2


async def test_read_only_tools_are_not_wrapped(server: MCPServer, ledger: list[str | None]) -> None:
    async with Client(server) as client:
        for _ in range(2):
            assert text(await client.call_tool("balance", {"customer": "c"})) == "42"
    assert ledger == [None, None]  # ran twice, with no key: MCP says it is safe to repeat


def test_safe_to_repeat_reads_the_hints() -> None:
    assert retrysafe_mcp.safe_to_repeat(ToolAnnotations(idempotentHint=True))
    assert retrysafe_mcp.safe_to_repeat(ToolAnnotations(readOnlyHint=True))
    assert not retrysafe_mcp.safe_to_repeat(ToolAnnotations(destructiveHint=True))
    assert not retrysafe_mcp.safe_to_repeat(None)

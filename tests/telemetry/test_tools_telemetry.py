"""Telemetry of ``@idempotent`` functions and ``@idempotent_tool`` agent tools (SPEC 32-34)."""

from __future__ import annotations

from typing import Any

import pytest

from kit.telemetry import AuditLines, Otel
from retrysafe import KeyMismatch
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry import report_cost
from retrysafe.tools import agent_run, idempotent, idempotent_tool


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_function_replay_links_and_records_cost_avoided(otel: Otel, audit_log: AuditLines) -> None:
    runs = []

    @idempotent(MemoryStore(), key=lambda amount: "charge-1", telemetry=otel.telemetry())
    def charge(amount: int) -> dict[str, int]:
        runs.append(amount)
        report_cost(0.02, "USD")
        return {"charged": amount}

    assert charge(5) == charge(5) == {"charged": 5}  # the cost header does not break replay
    assert runs == [5]
    with pytest.raises(KeyMismatch):
        charge(6)
    executed, replayed, mismatch = otel.spans()
    assert executed.name.startswith("retrysafe ")
    assert executed.name.endswith("charge")
    assert [attrs(s)["idempotency.outcome"] for s in (executed, replayed, mismatch)] == [
        "executed",
        "replayed",
        "mismatch",
    ]
    (link,) = replayed.links
    assert link.context.span_id == executed.context.span_id
    docs = audit_log.docs()
    assert [d["surface"] for d in docs] == ["function"] * 3
    assert docs[0]["cost"] == docs[1]["cost"] == {"USD": 0.02}
    assert [d["billable"] for d in docs] == [True, False, False]


async def test_async_function_exception_is_executed_500(otel: Otel, audit_log: AuditLines) -> None:
    @idempotent(MemoryStore(), key="k", telemetry=otel.telemetry())
    async def flaky() -> int:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await flaky()
    (doc,) = audit_log.docs()
    assert (doc["outcome"], doc["status"]) == ("executed", 500)
    (span,) = otel.spans()
    assert any(e.name == "exception" for e in span.events)


def test_tool_span_follows_the_genai_conventions(otel: Otel, audit_log: AuditLines) -> None:
    @idempotent_tool(MemoryStore(), name="search", telemetry=otel.telemetry())
    def search(query: str) -> list[str]:
        report_cost(150, "tokens")
        return [query.upper()]

    with agent_run("run-42"):
        assert search("a") == search("a") == ["A"]
    first, again = otel.spans()
    assert first.name == "execute_tool search"
    assert attrs(first)["gen_ai.operation.name"] == "execute_tool"
    assert attrs(first)["gen_ai.tool.name"] == "search"
    assert attrs(first)["gen_ai.conversation.id"] == "run-42"
    assert "gen_ai.tool.call.id" not in attrs(first)  # the provider gave none
    assert attrs(again)["idempotency.outcome"] == "replayed"
    assert again.links[0].context.span_id == first.context.span_id
    docs = audit_log.docs()
    assert [(d["surface"], d["operation"]) for d in docs] == [("tool", "search")] * 2
    assert docs[1]["cost"] == {"tokens": 150.0}


def test_tools_without_telemetry(audit_log: AuditLines) -> None:
    @idempotent(MemoryStore(), key="k", telemetry=None)
    def f() -> int:
        return 1

    assert f() == f() == 1
    assert audit_log.docs() == []

"""OpenAI Agents SDK function tools that run once per run, step and arguments (SPEC 30).

Two ways in, both keeping the tool's name, description and JSON schema exactly as the SDK
builds them:

- :func:`function_tool` - a drop-in for ``agents.function_tool``: the Python function is made
  an ``@idempotent_tool`` first, then handed to the SDK, so the SDK's argument validation,
  failure handling and timeouts work as usual, and a failed call releases its claim (the SDK
  turns the exception into a message for the model only after retrysafe has seen it).
- :func:`protect` - for an existing ``FunctionTool``: wraps its ``on_invoke_tool``, keyed on
  the parsed JSON arguments. The SDK's own failure handler runs inside, so an error it turns
  into a string is stored like a result; build such tools with
  ``failure_error_function=None`` or prefer :func:`function_tool`.

The run id comes from ``agent_run`` around ``Runner.run(...)``: the SDK runs tools in tasks
(and threads) that inherit the context. The provider's ``tool_call_id`` is never used.
``agents`` is imported only when these functions are called.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from retrysafe._policy import Policy
from retrysafe.stores import AsyncStore, Store
from retrysafe.tools._decorators import idempotent_tool
from retrysafe.tools.adapters._common import injected_params, is_subclass_or_instance


def _context_types() -> tuple[type, ...]:
    from agents import RunContextWrapper  # ToolContext is a subclass

    return (RunContextWrapper,)


__all__ = ["function_tool", "protect"]


def function_tool(
    store: Store | AsyncStore,
    *,
    version: str = "1",
    policy: Policy | None = None,
    store_exceptions: tuple[type[BaseException], ...] = (),
    **sdk_options: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """``@function_tool(store)``: ``agents.function_tool`` over an ``@idempotent_tool``.

    ``sdk_options`` go to ``agents.function_tool`` unchanged (``name_override``,
    ``failure_error_function``, ``timeout``...). Returns the SDK's ``FunctionTool``.
    """
    from agents import function_tool as sdk_function_tool

    def decorate(fn: Callable[..., Any]) -> Any:
        contexts = _context_types()
        ignore = injected_params(fn, lambda a: is_subclass_or_instance(a, contexts))
        protected = idempotent_tool(
            store,
            name=sdk_options.get("name_override") or fn.__name__,
            version=version,
            policy=policy,
            store_exceptions=store_exceptions,
            ignore_args=ignore,
        )(fn)
        return sdk_function_tool(protected, **sdk_options)

    return decorate


def protect(
    tool: Any,
    store: Store | AsyncStore,
    *,
    version: str = "1",
    policy: Policy | None = None,
) -> Any:
    """A copy of ``FunctionTool`` ``tool`` whose invocations run once per run and arguments."""
    original = tool.on_invoke_tool

    async def invoke(arguments: Any, ctx: Any, raw: str) -> Any:
        return await original(ctx, raw)

    guarded = idempotent_tool(
        store, name=tool.name, version=version, policy=policy, ignore_args=("ctx", "raw")
    )(invoke)

    async def on_invoke_tool(ctx: Any, raw: str) -> Any:
        return await guarded(json.loads(raw) if raw else {}, ctx, raw)

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)

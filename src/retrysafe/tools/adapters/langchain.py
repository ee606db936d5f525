"""LangChain tools that run once per run, step and arguments (SPEC 30).

:func:`protect` takes a ``StructuredTool`` or ``Tool`` (what ``@tool`` and
``StructuredTool.from_function`` build) and returns a copy whose ``func``/``coroutine`` are
``@idempotent_tool`` wrappers: name, description and ``args_schema`` are untouched, so the
model sees the same tool. Arguments LangChain injects - ``InjectedToolCallId`` (the
provider's per-turn id, which must never be part of a key), other ``InjectedToolArg`` values,
``RunnableConfig``, ``callbacks``/``run_manager`` - are left out of the key.

A ``BaseTool`` subclass with its own ``_run`` is protected by decorating that method with
``@idempotent_tool(store, name=..., ignore_args=("self", "run_manager"))`` (``"self"``: every
instance of the tool is the same tool; or give the class an ``idempotency_id``).

``agent_run`` around the graph or agent invocation supplies the run id (LangChain runs sync
tools in an executor with the caller's context copied). ``langchain_core`` is imported only
when :func:`protect` is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from retrysafe._policy import Policy
from retrysafe.errors import ConfigurationError
from retrysafe.stores import AsyncStore, Store
from retrysafe.tools._decorators import idempotent_tool
from retrysafe.tools.adapters._common import injected_params, is_subclass_or_instance

_INJECTED_NAMES = frozenset({"callbacks", "run_manager", "config"})


def _ignored(fn: Callable[..., Any]) -> set[str]:
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import InjectedToolArg

    def injected(part: object) -> bool:
        return part is RunnableConfig or is_subclass_or_instance(part, (InjectedToolArg,))

    names = set(inspect.signature(fn).parameters)
    return injected_params(fn, injected) | (names & _INJECTED_NAMES)


__all__ = ["protect"]


def protect(
    tool: Any,
    store: Store | AsyncStore,
    *,
    version: str = "1",
    policy: Policy | None = None,
    store_exceptions: tuple[type[BaseException], ...] = (),
) -> Any:
    """A copy of LangChain ``tool`` whose calls run once per run, step and arguments."""
    from langchain_core.tools import BaseTool

    if not isinstance(tool, BaseTool):
        raise ConfigurationError(f"protect() takes a LangChain BaseTool, not {type(tool)!r}")
    func = getattr(tool, "func", None)
    coroutine = getattr(tool, "coroutine", None)
    if func is None and coroutine is None:
        raise ConfigurationError(
            f"tool {tool.name!r} has no func/coroutine to wrap ({type(tool).__name__}); "
            "decorate its _run/_arun with @idempotent_tool instead"
        )

    def guard(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if fn is None:
            return None
        return idempotent_tool(
            store,
            name=tool.name,
            version=version,
            policy=policy,
            store_exceptions=store_exceptions,
            ignore_args=_ignored(fn),
        )(fn)

    return tool.model_copy(update={"func": guard(func), "coroutine": guard(coroutine)})

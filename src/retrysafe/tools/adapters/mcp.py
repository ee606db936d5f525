"""MCP server tools that run once per run, step and arguments (SPEC 30).

``@tool(server, store)`` registers a function on an ``mcp`` server (``MCPServer`` in mcp 2,
``FastMCP`` in mcp 1: anything with ``add_tool(fn, name=..., annotations=...)``) the way
``@server.tool()`` would, with the same name, description and input schema.

Honouring the tool annotations: a tool declared ``readOnlyHint=True`` or
``idempotentHint=True`` is, by its own contract, safe to repeat, so it is registered
untouched. Every other tool (MCP's defaults: not read-only, destructive, not idempotent) is
wrapped with ``@idempotent_tool``.

The run id: MCP has no standard field for a durable agent run, so the client sends it in the
request's ``_meta`` under :data:`RUN_ID_META` (``client.call_tool(name, args,
meta={"retrysafe/run_id": run_id})``); without it, an enclosing ``agent_run`` applies (an
in-process server), and otherwise the call is refused with ``AgentRunRequired``. To read the
meta the registered function takes MCP's ``Context``: the tool's own context parameter if it
has one, else a hidden keyword-only one that MCP injects and leaves out of the schema.
``mcp`` is imported only when :func:`tool` is called.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from retrysafe._policy import Policy
from retrysafe.stores import AsyncStore, Store
from retrysafe.tools._decorators import idempotent_tool
from retrysafe.tools._runs import agent_run
from retrysafe.tools.adapters._common import injected_params, is_subclass_or_instance

RUN_ID_META = "retrysafe/run_id"
_HIDDEN = "retrysafe_mcp_context"


def _context_class() -> type:
    try:
        from mcp.server.mcpserver import Context
    except ImportError:  # mcp 1.x names it differently; looked up dynamically for mypy
        return importlib.import_module("mcp.server.fastmcp").Context  # type: ignore[no-any-return]
    return Context


__all__ = ["RUN_ID_META", "safe_to_repeat", "tool"]


def safe_to_repeat(annotations: Any) -> bool:
    """Whether MCP tool annotations declare repeats harmless (read-only or idempotent)."""
    if annotations is None:
        return False

    def hint(camel: str, snake: str) -> bool:
        # mcp 2 models use snake_case attributes (camelCase aliases); mcp 1 used camelCase.
        if isinstance(annotations, Mapping):
            return bool(annotations.get(camel) or annotations.get(snake))
        return bool(getattr(annotations, snake, None) or getattr(annotations, camel, None))

    return hint("readOnlyHint", "read_only_hint") or hint("idempotentHint", "idempotent_hint")


def _run_id(ctx: Any, key: str) -> str | None:
    try:
        meta = ctx.request_context.meta
    except Exception:  # no request behind this context (a direct server.call_tool)
        return None
    if meta is None:
        return None
    if not isinstance(meta, Mapping):  # mcp 1.x: a pydantic model with extra fields
        meta = getattr(meta, "model_extra", None) or {}
    value = meta.get(key)
    return value if isinstance(value, str) and value else None


def _run_scope(ctx: Any, key: str) -> AbstractContextManager[object]:
    run_id = _run_id(ctx, key)
    return agent_run(run_id) if run_id is not None else nullcontext()


def tool(
    server: Any,
    store: Store | AsyncStore,
    *,
    name: str | None = None,
    version: str = "1",
    annotations: Any = None,
    policy: Policy | None = None,
    store_exceptions: tuple[type[BaseException], ...] = (),
    run_id_meta: str = RUN_ID_META,
    **add_tool_options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@tool(server, store)``: register ``fn`` on ``server`` as an MCP tool run once per key.

    Returns the protected function (direct calls are protected too). ``add_tool_options``
    (``title``, ``description``, ``meta``, ...) go to ``server.add_tool`` unchanged.
    """
    context_class = _context_class()

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        tool_name = name or fn.__name__
        if safe_to_repeat(annotations):
            server.add_tool(fn, name=tool_name, annotations=annotations, **add_tool_options)
            return fn
        own = injected_params(fn, lambda a: is_subclass_or_instance(a, (context_class,)))
        protected = idempotent_tool(
            store,
            name=tool_name,
            version=version,
            policy=policy,
            store_exceptions=store_exceptions,
            ignore_args=own,
        )(fn)
        ctx_name = next(iter(own), None)
        entry = _entry(fn, protected, ctx_name, context_class, run_id_meta)
        server.add_tool(entry, name=tool_name, annotations=annotations, **add_tool_options)
        return protected

    return decorate


def _entry(
    fn: Callable[..., Any],
    protected: Callable[..., Any],
    ctx_name: str | None,
    context_class: type,
    meta_key: str,
) -> Callable[..., Any]:
    """What MCP calls: reads the run id from the request, then calls ``protected``."""

    def context_of(kwargs: dict[str, Any]) -> Any:
        return kwargs[ctx_name] if ctx_name is not None else kwargs.pop(_HIDDEN, None)

    entry: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        async def async_entry(*args: Any, **kwargs: Any) -> Any:
            with _run_scope(context_of(kwargs), meta_key):
                return await protected(*args, **kwargs)

        entry = async_entry
    else:

        def sync_entry(*args: Any, **kwargs: Any) -> Any:
            with _run_scope(context_of(kwargs), meta_key):
                return protected(*args, **kwargs)

        entry = sync_entry

    # Present fn's own signature (annotations resolved, so MCP builds the same schema), plus a
    # keyword-only Context parameter when fn has none: MCP injects it and leaves it out.
    signature = inspect.signature(fn, eval_str=True)
    hints = dict(typing.get_type_hints(fn, include_extras=True))
    if ctx_name is None:
        hidden = inspect.Parameter(
            _HIDDEN, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=context_class
        )
        params = list(signature.parameters.values())
        at = next(
            (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
            len(params),
        )
        params.insert(at, hidden)
        signature = signature.replace(parameters=params)
        hints[_HIDDEN] = context_class
    entry.__signature__ = signature  # type: ignore[union-attr]
    entry.__annotations__ = hints
    entry.__name__ = fn.__name__
    entry.__qualname__ = fn.__qualname__
    entry.__doc__ = fn.__doc__
    entry.__module__ = fn.__module__
    return entry

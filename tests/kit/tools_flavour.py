"""Sync/async twins for the tool tests: one test body checks both flavours."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest


class Flavour:
    """Builds a sync or an async function from the same body, and calls either the same way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_async = name == "async"

    def make(self, body: Callable[..., Any]) -> Callable[..., Any]:
        """``body`` itself (sync) or an ``async def`` with ``body``'s signature and name."""
        if not self.is_async:
            return body

        async def async_body(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)  # a real suspension point, as an async tool would have
            return body(*args, **kwargs)

        return functools.wraps(body)(async_body)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return asyncio.run(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, list[Any]]:
        """Call ``fn`` on a new thread (its context copied); the list gets result or error."""
        out: list[Any] = []

        def target() -> None:
            try:
                out.append(self.call(fn, *args))
            except BaseException as exc:
                out.append(exc)

        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(target,))
        thread.start()
        return thread, out

    def __str__(self) -> str:
        return self.name


# Decorate a test taking ``flavour`` with this to run it once sync and once async.
both = pytest.mark.parametrize("flavour", [Flavour("sync"), Flavour("async")], ids=str)


def need(module: str) -> Any:
    """Import an SDK the adapter tests drive; skip on a dev machine without it, fail in CI."""
    import importlib

    from kit.stores import require_service

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_service(module, f"not installed (pip install -e '.[agents]'): {exc}")
        raise  # require_service always skips or fails

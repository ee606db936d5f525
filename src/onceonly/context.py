"""The key of the operation in progress, readable anywhere below a handler or tool (SPEC 19)."""

from __future__ import annotations

from contextvars import ContextVar

_current_key: ContextVar[str | None] = ContextVar("onceonly_current_key", default=None)


def current_key() -> str | None:
    """The idempotency key of the request or call being handled, or None outside one."""
    return _current_key.get()

"""The key of the operation in progress, readable anywhere below a handler or tool (SPEC 19).

Downstream keys (SPEC 19, 29): code running on behalf of a keyed operation derives one sub-key
per outgoing keyed request with :func:`next_derived_key`. Derivation is deterministic — the
n-th keyed request made under parent key ``P`` always gets ``derive_key(P, str(n))``, counting
from 1 — so when a crashed or retried operation runs again with the same key, its downstream
calls carry the same keys as the first run and the downstream service deduplicates them.

The counter belongs to the keyed scope: every :class:`key_scope` (what the middlewares and
tool decorators enter) starts counting from 1, so a second run of the same key — a retry
after an exception, a recovery after a crash — derives the same sub-keys as the first, and a
nested scope never disturbs its parent's count. Requests issued concurrently under one key get
distinct sub-keys, numbered in the order they were issued; make keyed calls in a
deterministic order.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token

from retrysafe._keys import derive_key


class _ScopedKey(str):
    """The current key, carrying the sub-key counter of the scope that set it.

    Every ``_current_key.set(key)`` makes a new one, so each keyed scope — a tool call, a
    handled request — counts its downstream keys from 1, however the scope was entered, and
    resetting to an outer scope restores that scope's counter where it was. Threads that copy
    the context share the scope, hence the lock: one for all scopes, since a lock per scope
    cost more than the rest of the scope on every request, while keyed downstream calls are
    few and hold it for one addition.
    """

    _count = 0  # no __slots__ (a str subclass cannot have them): set on the instance when used

    def next_number(self) -> int:
        with _count_lock:
            self._count += 1
            return self._count


_count_lock = threading.Lock()


class _KeyVar:
    """``_current_key``: a ContextVar of the current key whose ``set`` starts a fresh scope."""

    __slots__ = ("_var",)

    def __init__(self) -> None:
        self._var: ContextVar[str | None] = ContextVar("retrysafe_current_key", default=None)

    def get(self) -> str | None:
        return self._var.get()

    def set(self, key: str | None) -> Token[str | None]:
        return self._var.set(_ScopedKey(key) if key is not None else None)

    def reset(self, token: Token[str | None]) -> None:
        self._var.reset(token)


_current_key = _KeyVar()
_key_var = _current_key._var


def current_key() -> str | None:
    """The idempotency key of the request or call being handled, or None outside one."""
    key = _current_key.get()
    return str(key) if key is not None else None  # a plain str, not the scope object


class key_scope:  # lowercase: read as a function, ``with key_scope(key):``
    """Run the block as the operation keyed ``key`` (sets the current key; restores on exit).

    Works in sync and async code alike; the middlewares and tool decorators set the key
    this way too. A class, not a generator: it runs on every keyed request.
    """

    __slots__ = ("_key", "_reset")

    def __init__(self, key: str) -> None:
        self._key = key

    # The ContextVar itself, not ``_current_key``'s methods: a call less on entry and on exit
    # of every keyed request.
    def __enter__(self) -> str:
        key = self._key
        self._reset = _key_var.set(_ScopedKey(key))
        return key

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        _key_var.reset(self._reset)


def next_derived_key() -> str | None:
    """The next downstream sub-key under the current key, or None when no key is current.

    The n-th call in a keyed scope with key ``P`` returns ``derive_key(P, str(n))``
    (n = 1, 2, ...). The HTTP client transport calls this once per outgoing keyed request that
    has no key of its own (SPEC 20, 29).
    """
    key = _current_key.get()
    if key is None:
        return None
    if not isinstance(key, _ScopedKey):  # pragma: no cover - only _KeyVar.set writes the var
        key = _ScopedKey(key)
    return derive_key(str(key), str(key.next_number()))

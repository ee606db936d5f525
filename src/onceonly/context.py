"""The key of the operation in progress, readable anywhere below a handler or tool (SPEC 19).

Downstream keys (SPEC 19, 29): code running on behalf of a keyed operation derives one sub-key
per outgoing keyed request with :func:`next_derived_key`. Derivation is deterministic — the
n-th keyed request made under parent key ``P`` always gets ``derive_key(P, str(n))``, counting
from 1 — so when a crashed or retried operation runs again with the same key, its downstream
calls carry the same keys as the first run and the downstream service deduplicates them.

The counter belongs to the context that set the key. Layers that run work under a key (a tool
call, a handler) should enter :func:`key_scope`, which sets the key *and* a fresh counter, so a
second run of the same key in the same context starts counting from 1 again. Code that sets
only ``_current_key`` still works: the counter restarts whenever the parent key changes.
Requests issued concurrently under one key get distinct sub-keys, but which one gets which
number follows the order they were issued in; make keyed calls in a deterministic order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from onceonly.keys import derive_key

_current_key: ContextVar[str | None] = ContextVar("onceonly_current_key", default=None)


class _Derivation:
    """The sub-key counter of one keyed scope (shared by threads that copy the context)."""

    __slots__ = ("count", "lock", "parent")

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.count = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.count += 1
            return self.count


_derivation: ContextVar[_Derivation | None] = ContextVar("onceonly_derivation", default=None)


def current_key() -> str | None:
    """The idempotency key of the request or call being handled, or None outside one."""
    return _current_key.get()


@contextmanager
def key_scope(key: str) -> Iterator[str]:
    """Run the block as the operation keyed ``key``: sets the current key and a fresh counter.

    Works in sync and async code alike (it only sets context variables); restores both on exit.
    """
    key_token = _current_key.set(key)
    counter_token = _derivation.set(_Derivation(key))
    try:
        yield key
    finally:
        _derivation.reset(counter_token)
        _current_key.reset(key_token)


def next_derived_key() -> str | None:
    """The next downstream sub-key under the current key, or None when no key is current.

    The n-th call under parent ``P`` returns ``derive_key(P, str(n))`` (n = 1, 2, ...).
    The HTTP client transport calls this once per outgoing keyed request that has no key of
    its own (SPEC 20, 29).
    """
    parent = _current_key.get()
    if parent is None:
        return None
    derivation = _derivation.get()
    if derivation is None or derivation.parent != parent:
        derivation = _Derivation(parent)
        _derivation.set(derivation)
    return derive_key(parent, str(derivation.next()))

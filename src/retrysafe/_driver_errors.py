"""One context manager that turns a backend's exceptions into :class:`StoreUnavailable`.

Backend exceptions never escape a store (errors.py, one root): every round trip of the Redis
and PostgreSQL stores runs inside :func:`translated`, which chains the original exception so
the cause stays visible in tracebacks and logs. A store that cannot answer fails closed
(SPEC 17): the adapters turn StoreUnavailable into a 503 problem. Public because code keeping
state of its own on the same servers does the same (the client's dead-letter queue backends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from retrysafe.errors import StoreUnavailable

__all__ = ["caught", "translated", "unavailable"]


@contextlib.contextmanager
def translated(what: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Re-raise any of ``errors`` (and socket errors, timeouts) as StoreUnavailable."""
    try:
        yield
    except StoreUnavailable:
        raise
    except caught(errors) as exc:
        raise unavailable(what, exc) from exc


def caught(errors: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    """What :func:`translated` turns into StoreUnavailable, for a hot path's own ``except``
    (a generator-based context manager costs a few microseconds per use)."""
    return (*errors, OSError, TimeoutError)


def unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable for ``exc``; raise it ``from exc``."""
    return StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}")

"""One context manager that turns a backend's exceptions into :class:`StoreUnavailable`.

Backend exceptions never escape a store (errors.py, STYLE 4): every round trip of the Redis
and PostgreSQL stores runs inside :func:`translated`, which chains the original exception so
the cause stays visible in tracebacks and logs. A store that cannot answer fails closed
(SPEC 17): the adapters turn StoreUnavailable into a 503 problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from onceonly.errors import StoreUnavailable


@contextlib.contextmanager
def translated(what: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Re-raise any of ``errors`` (and socket errors, timeouts) as StoreUnavailable."""
    caught: tuple[type[BaseException], ...] = (*errors, OSError, TimeoutError)
    try:
        yield
    except StoreUnavailable:
        raise
    except caught as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc

"""Why a PostgreSQL connection could not be made, said once, in the error the caller gets.

psycopg_pool connects in background workers: a caller waiting for a connection only sees
``PoolTimeout: couldn't get a connection after 2.00 sec``, while the cause (``database "x"
does not exist``, ``password authentication failed``, ``Connection refused``) goes to the
``psycopg.pool`` logger as a warning per attempt. The store's pool uses a connection class
that remembers the last failure (:func:`recording_connection`), its StoreUnavailable names it
(:func:`reason`), and the pool's own warnings for the store's pools are dropped
(:class:`OwnConnectWarnings`): the middleware already logs the store error, cause included.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

POOL_NAME_PREFIX = "retrysafe-"  # the store's pools are named retrysafe-<table>


class ConnectFailures:
    """The last failed connect of one pool (None after a success)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: psycopg.Error | None = None


def recording_connection(failures: ConnectFailures) -> type[psycopg.Connection[Any]]:
    """A ``psycopg.Connection`` class whose ``connect`` records its failures in ``failures``."""

    class RecordingConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                conn = super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                failures.last = exc
                raise
            failures.last = None
            return conn

    return RecordingConnection


def is_connect_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is psycopg's error for a connection that could not be made."""
    # psycopg 3 words them "connection failed: connection to server at ... failed: <cause>"
    # (and "connection timeout expired"); a connection lost mid-statement is worded otherwise.
    return isinstance(exc, psycopg.OperationalError) and str(exc).startswith(
        ("connection failed", "connection timeout", "connection to server")
    )


def reason(exc: BaseException) -> str:
    """The cause of a failed connect in one line: ``database "x" does not exist``,
    ``Connection refused``, ``password authentication failed for user "u"``..."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = first.rpartition(" failed: ")[2] or first
    for severity in ("FATAL:", "ERROR:"):
        cause = cause.removeprefix(severity).strip()
    return cause


class OwnConnectWarnings(logging.Filter):
    """Drops psycopg_pool's per-attempt "error connecting in 'retrysafe-...'" warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("error connecting in")
            and isinstance(args, tuple)
            and bool(args)
            and str(args[0]).startswith(POOL_NAME_PREFIX)
        )


_FILTER = OwnConnectWarnings()


def quiet_pool_warnings() -> None:
    """Install the filter on the ``psycopg.pool`` logger (once; adding it again is a no-op)."""
    logging.getLogger("psycopg.pool").addFilter(_FILTER)

"""The execution's ``transaction.atomic()`` block, as both Django links (SQLite, PostgreSQL) use it.

The record must commit the outermost transaction, so a link refuses a database already inside
one (:func:`outermost`), and ends its block with a rollback by handing Django
:class:`RolledBack` (what an exception leaving ``with transaction.atomic():`` would do).
"""

from __future__ import annotations

from typing import Any

from retrysafe.errors import ConfigurationError


class RolledBack(Exception):
    """Handed to ``Atomic.__exit__`` to make Django roll back (and drop on_commit callbacks)."""


def outermost(wrapper: Any, using: str) -> None:
    """Refuse a database already inside ``transaction.atomic()``: the record must commit the
    outermost transaction."""
    if wrapper.in_atomic_block:
        raise ConfigurationError(
            f"database {using!r} is already inside transaction.atomic() (is "
            "ATOMIC_REQUESTS on?): the record must commit the outermost transaction, so "
            "let retrysafe's atomic=True be it"
        )

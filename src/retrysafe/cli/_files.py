"""Before a command opens a SQLite store or dead-letter queue: is the file there, and which kind?

Opening a SQLite file creates it, and creates the opener's table in any database it is
pointed at. An inspecting command (``keys show``, ``keys stats``, ``dlq list``...) must create
nothing: a missing file is reported (exit 1), and a file of another kind (a text file, the
dead-letter queue's database given to ``keys``, the idempotency store given to ``dlq``) is
refused (exit 2). The file is read with a read-only connection that cannot change it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from retrysafe.cli._errors import BadInput, NotFound


@dataclass(frozen=True, slots=True)
class FileKind:
    """One kind of SQLite file retrysafe writes: its table, what it is called, which command."""

    table: str
    name: str
    command: str
    article: str = "a"

    @property
    def a_name(self) -> str:
        return f"{self.article} {self.name}"


IDEMPOTENCY_STORE = FileKind("retrysafe_records", "idempotency store", "retrysafe keys", "an")
DEAD_LETTER_QUEUE = FileKind("retrysafe_dlq", "dead-letter queue", "retrysafe dlq")
_KINDS = (IDEMPOTENCY_STORE, DEAD_LETTER_QUEUE)


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite:///...`` URL names (query options dropped), or None for another URL."""
    if not url.lower().startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :].partition("?")[0]
    return Path(rest).expanduser() if rest else None


def check_sqlite(url: str, want: FileKind, *, must_exist: bool = True) -> None:
    """Refuse ``url`` when it names a SQLite file that is missing (``must_exist``), not a
    database, or a database of another kind; do nothing for other URLs."""
    path = sqlite_path(url)
    if path is None:
        return
    if not path.exists():
        if must_exist:
            raise NotFound(
                f"no {want.name} at {str(path)!r}: the file does not exist (nothing was created)"
            )
        return
    if path.is_dir():
        raise BadInput(f"{str(path)!r} is a directory, not {want.a_name} file")
    tables = _tables(path, want)
    if want.table in tables:
        return
    for other in _KINDS:
        if other.table in tables:
            raise BadInput(
                f"{str(path)!r} is {other.a_name}, not {want.a_name}: "
                f"use {other.command} for it (nothing was changed)"
            )
    if tables:
        shown = ", ".join(sorted(tables)[:5])
        raise BadInput(
            f"{str(path)!r} is a SQLite database without {want.a_name} in it (its tables: "
            f"{shown}); point --store at the {want.name} (nothing was changed)"
        )
    if must_exist:
        raise NotFound(f"{str(path)!r} holds no {want.name} yet: nothing to show")


def _tables(path: Path, want: FileKind) -> set[str]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BadInput(f"cannot read {str(path)!r}: {exc}") from exc
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as exc:  # "file is not a database": a text file, say
        raise BadInput(
            f"{str(path)!r} is not a SQLite database ({exc}); point --store at the {want.name}"
        ) from exc
    finally:
        conn.close()
    return {str(name) for (name,) in rows}

"""What the sync SQLAlchemy links (SQLite, PostgreSQL) share: a connection of the application's
engine and one ORM ``Session`` per execution joined to its outer transaction in
``rollback_only`` mode (so ``session.commit()`` only flushes), flushed before the record
completes and closed - connection back to the engine's pool - at the end. The async twin is
``_sqlalchemy_async.AsyncSessionLink``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session


class SessionLink:
    """The application's connection and its one session (base of the sync links)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn = engine.connect()
        self._session: Session | None = None

    @property
    def handle(self) -> Connection:
        return self._conn

    def session(self, **options: Any) -> Session:
        """One ORM session per execution, joined to the connection's transaction."""
        if self._session is None:
            self._session = Session(
                bind=self._conn, join_transaction_mode="rollback_only", **options
            )
        return self._session

    def flush(self) -> None:
        if self._session is not None:
            self._session.flush()

    def close(self) -> None:
        try:
            if self._session is not None:
                self._session.close()
        finally:
            self._conn.close()  # back to the engine's pool

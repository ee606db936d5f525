"""What the async SQLAlchemy links (PostgreSQL, SQLite) share: the application's
``AsyncConnection`` and one ``AsyncSession`` per execution joined to its outer transaction in
``rollback_only`` mode (so ``session.commit()`` only flushes), flushed before the record
completes and closed - connection back to the engine's pool - on the event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the asyncio extension needs greenlet: imported only when used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession


class AsyncSessionLink:
    """The application's async connection and its one session (base of the async links)."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection) -> None:
        self.engine = engine
        self._conn = conn
        self._session: AsyncSession | None = None

    @property
    def handle(self) -> AsyncConnection:
        return self._conn

    def session(self, **options: Any) -> AsyncSession:
        """One ``AsyncSession`` per execution, joined to the connection's transaction."""
        if self._session is None:
            from sqlalchemy.ext.asyncio import AsyncSession

            self._session = AsyncSession(
                bind=self._conn, join_transaction_mode="rollback_only", **options
            )
        return self._session

    async def aflush(self) -> None:
        if self._session is not None:
            await self._session.flush()

    async def aclose(self) -> None:
        try:
            if self._session is not None:
                await self._session.close()
        finally:
            await self._conn.close()

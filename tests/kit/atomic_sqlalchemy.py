"""The ledger model the SQLAlchemy atomic tests write: one ``charges`` row per order."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Charge(Base):
    __tablename__ = "charges"
    id: Mapped[int] = mapped_column(primary_key=True)
    order: Mapped[str] = mapped_column(String, unique=True)
    cents: Mapped[int]

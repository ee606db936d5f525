"""Module-level types the tool tests return and replay (the serializer finds them by name)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal

import pydantic


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 0
    HIGH = 1


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    order_id: str
    amount: Decimal
    at: dt.datetime
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Counted:
    """``__post_init__`` mutates state: a replay must not run it a second time."""

    value: int
    seen: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        self.seen += 1


class Invoice(pydantic.BaseModel):
    number: int
    total: Decimal
    lines: tuple[str, ...]
    issued: dt.date
    receipt: Receipt | None = None


class Opaque:
    """A plain class the default serializer cannot store."""


class PaymentDeclined(Exception):
    """A business outcome worth storing: a retry must see the same decline."""

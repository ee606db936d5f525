"""Fixtures of the HTTP conformance suite: every SPEC rule, every store, every door.

``serve(handler, policy=...)`` builds an application behind the middleware of the current
door (raw ASGI, Starlette, raw WSGI, Flask) on the current store (the ``kit`` fixture), wrapped
in a :class:`~kit.doors.SpyStore`. Durations are in ``kit.tick`` units so that real-clock stores
(Redis, PostgreSQL) run the same tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kit.doors import DOORS, Behaviour, Door, Handler, SpyStore, created
from kit.stores import FAR
from kit.wakes import HANG
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope

Serve = Callable[..., Door]

# Stores whose clock is the server's: time passes for real there (``kit.tick`` = 0.2 s).
REAL_CLOCK_KINDS = ("redis", "postgres")
CLOCK_DOOR = "asgi"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``store_clock`` test (a TTL or a lease lapsing) runs on a real-clock store through one
    door only. The store alone decides expiry and takeover; the doors hand it the policy's
    durations and never read a clock, so every door is still checked on the fake-clock stores
    (memory, SQLite) and every store's clock through the ASGI door. The other three doors
    would each wait out the same real seconds again for nothing new."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (
            item.get_closest_marker("store_clock") is not None
            and params.get("kit") in REAL_CLOCK_KINDS
            and params.get("door_kind") != CLOCK_DOOR
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=list(DOORS))
def door_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def policy_for(kit: Any) -> Callable[..., Policy]:
    """A Policy in tick units: a TTL and a lease no test outlives (FAR), and a wait bound that
    only a hang reaches (HANG, real time like the wait itself)."""

    def make(**changes: Any) -> Policy:
        base: dict[str, Any] = {
            # Tests not about who owns a key send no credentials: one explicit shared scope.
            "scope": shared_scope,
            "ttl": FAR * kit.tick,
            "lease": FAR * kit.tick,
            "wait": HANG,
        }
        base.update(changes)
        return Policy(**base)

    return make


@pytest.fixture
async def serve(
    kit: Any, door_kind: str, policy_for: Callable[..., Policy]
) -> AsyncIterator[Serve]:
    opened: list[Door] = []

    def make(
        behaviour: Behaviour | Handler = created,
        *,
        policy: Policy | None = None,
        store: Any = None,
    ) -> Door:
        handler = behaviour if isinstance(behaviour, Handler) else Handler(behaviour)
        door = DOORS[door_kind](
            handler, store if store is not None else SpyStore(kit.store), policy or policy_for()
        )
        opened.append(door)
        return door

    yield make
    for door in opened:
        await door.aclose()

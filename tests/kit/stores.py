"""Every store kind the project has, as a :class:`StoreKit` (used by the ``kit`` fixture).

A :class:`StoreKit` hides whether a store's clock can be moved by the test (memory, SQLite: a
fake clock) or is a real server clock (Redis, PostgreSQL: real time passes). Tests express
durations in ``kit.tick`` units and move time with ``kit.advance``, so one test body runs
against every store. New backends register a factory in ``STORE_KINDS``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kit.wakes import HANG
from retrysafe.stores._base import DualStore
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class FakeClock:
    """A store clock that only moves when told to (thread-safe)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Stalled(Exception):
    """A real-clock observation took longer than its margin: what it saw proves nothing."""


# On a real clock an observation is sound one way round only.
#
# A lower bound ("the lease has lapsed after advancing 3 ticks") needs no guard: ``advance``
# sleeps, so at least that much time passed on the server's clock between the call that set
# the deadline and the call that observes it, however loaded the machine; a stall only adds
# time, and the deadline is behind all the more.
#
# An upper bound ("the lease is still held after advancing 2 ticks of 2.5") holds only if the
# real time from before the call that set the deadline to after the call that observed it
# stayed under the deadline's distance. The sleep is the least that time can be, not the most:
# a loaded machine that stalls a call past the margin makes the store answer correctly that
# the deadline passed, and the test fail for nothing. ``StoreKit.within`` measures that span
# and voids the observation (Stalled) when it ran too long; ``rerun_when_stalled`` runs the
# test again. A fake clock moves only with ``advance``: nothing stalls there.


@dataclass
class StoreKit:
    """One store under test, plus the means to move its clock and open it again."""

    name: str
    store: DualStore
    advance: Callable[[float], None]
    reopen: Callable[[], DualStore]  # another handle on the same data, as another process would
    tick: float = 1.0  # a "unit" of time for this store: 1 s fake, shorter for real clocks
    real_clock: bool = False
    closers: list[Callable[[], None]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # moves with `advance` (the fake clock, if any)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()

    @contextlib.contextmanager
    def within(self, ticks: float) -> Iterator[None]:
        """The block must run in less than ``ticks`` ticks of real time, or :class:`Stalled`.

        Wrap everything from before the call that sets a deadline ``ticks`` ticks away to
        after the call that sees it still ahead. A block that overran raises Stalled even if
        it raised something else (chained): an assertion about a deadline that real time had
        already passed is void. Fake clocks never stall.
        """
        if not self.real_clock:
            yield
            return
        limit = ticks * self.tick
        start = time.monotonic()
        try:
            yield
        except Exception as exc:
            elapsed = time.monotonic() - start
            if elapsed >= limit:
                raise Stalled(_overran(self, ticks, elapsed)) from exc
            raise
        elapsed = time.monotonic() - start
        if elapsed >= limit:
            raise Stalled(_overran(self, ticks, elapsed))


def _overran(kit: StoreKit, ticks: float, elapsed: float) -> str:
    return (
        f"{kit.name}: a {ticks:g}-tick window ({ticks * kit.tick:.2f} s) took {elapsed:.2f} s "
        "of real time: the observation in it is void"
    )


STALL_ATTEMPTS = 5  # runs of a test whose every attempt stalled: the machine is too busy
Test = TypeVar("Test", bound=Callable[..., Any])


def rerun_when_stalled(test: Test) -> Test:
    """Run ``test`` again (up to ``STALL_ATTEMPTS`` runs in all) when it raises
    :class:`Stalled`; fail, saying so, when every run stalled. Anything else it raises
    (an assertion outside a stalled window) fails it at once, as usual.

    The body runs again from the start with the same fixtures, so it must take fresh ids
    (``new_id``) rather than fixed ones, or the records an earlier attempt left would be in
    its way. The wrapper keeps the test's signature (functools.wraps), so pytest still sees
    its fixtures and parameters, and is a coroutine function when the test is one.
    """

    def gave_up(stalls: list[Stalled]) -> str:
        lines = "\n".join(f"  attempt {i}: {stall}" for i, stall in enumerate(stalls, 1))
        return (
            f"{test.__name__}: every one of {len(stalls)} attempts stalled past a real-clock "
            f"margin, so none proved anything; the machine is too loaded for it:\n{lines}"
        )

    if inspect.iscoroutinefunction(test):

        @functools.wraps(test)
        async def arerun(*args: Any, **kwargs: Any) -> Any:
            stalls: list[Stalled] = []
            for _ in range(STALL_ATTEMPTS):
                try:
                    return await test(*args, **kwargs)
                except Stalled as stall:
                    stalls.append(stall)
            pytest.fail(gave_up(stalls))

        return arerun  # type: ignore[return-value]

    @functools.wraps(test)
    def rerun(*args: Any, **kwargs: Any) -> Any:
        stalls: list[Stalled] = []
        for _ in range(STALL_ATTEMPTS):
            try:
                return test(*args, **kwargs)
            except Stalled as stall:
                stalls.append(stall)
        pytest.fail(gave_up(stalls))

    return rerun  # type: ignore[return-value]


def _memory(tmp_path: Path) -> StoreKit:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    return StoreKit("memory", store, clock.advance, lambda: store, clock=clock)


def _sqlite(tmp_path: Path) -> StoreKit:
    clock = FakeClock()
    path = tmp_path / "retrysafe.db"
    store = SQLiteStore(path, clock=clock)
    opened: list[SQLiteStore] = [store]

    def reopen() -> DualStore:
        again = SQLiteStore(path, clock=clock)
        opened.append(again)
        return again

    kit = StoreKit("sqlite", store, clock.advance, reopen, clock=clock)
    kit.closers.append(lambda: [s.close() for s in opened] and None)
    return kit


REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# A tick on a real clock: long enough that a loaded machine's latency usually stays inside
# half a tick, the margin between an observation and a deadline (see ``StoreKit.within`` for
# what happens when it does not).
REAL_TICK = 0.2
# Ticks: a lease, TTL or retention no test outlives (over half an hour on a real clock), for
# every deadline a test does not observe. A test that is not about time then passes however
# long a loaded machine stalls it (a 4.5-tick TTL is 0.9 s on a real clock: opening a new
# Redis Cluster client on a busy machine has taken that long).
FAR = 10_000
_reachable: dict[str, str | None] = {}  # url -> None if up, else why not (checked once)


def server_down(url: str) -> str | None:
    """Why the shared Redis/PostgreSQL at ``url`` cannot be used, or None (checked once)."""
    if url not in _reachable:
        try:
            if url.startswith("redis"):
                import redis

                redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
            else:
                import psycopg

                psycopg.connect(url, connect_timeout=2).close()
            _reachable[url] = None
        except Exception as exc:  # ImportError, connection refused, auth...
            _reachable[url] = f"{type(exc).__name__}: {exc}"
    return _reachable[url]


def _redis(tmp_path: Path) -> StoreKit:
    """A real Redis with a key prefix of its own per test (real clock: time really passes)."""
    if why := server_down(REDIS_URL):
        require_service("Redis", why)
    return redis_kit(REDIS_URL)


def redis_kit(url: str, name: str = "redis") -> StoreKit:
    """A kit on the Redis (or Redis Cluster) at ``url``."""
    from retrysafe.stores.redis import RedisStore

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    # The store's own deadlines (1 s per connect, 2 s per command) are real-clock bounds no
    # test here observes: a loaded machine that stalls a worker past one failed a test that
    # is not about time (a connect that timed out, once, under ``under-load``). A test about
    # timeouts makes its own store.
    bounds = {"timeout": HANG, "connect_timeout": HANG}
    opened = [RedisStore(url, prefix=prefix, **bounds)]

    def reopen() -> DualStore:
        opened.append(RedisStore(url, prefix=prefix, **bounds))
        return opened[-1]

    def close() -> None:
        for store in opened[1:]:
            store.close()
        with contextlib.suppress(Exception):  # the server may be gone (outage tests)
            opened[0].drop_keys()
        opened[0].close()

    kit = StoreKit(name, opened[0], time.sleep, reopen, tick=REAL_TICK, real_clock=True)
    kit.closers.append(close)
    return kit


def _postgres(tmp_path: Path) -> StoreKit:
    """A real PostgreSQL with a table of its own per test (real clock: time really passes)."""
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    from retrysafe.stores.postgres import PostgresStore

    prefix = f"t{uuid.uuid4().hex[:12]}_"
    opened = [PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0)]

    def reopen() -> DualStore:
        opened.append(PostgresStore(POSTGRES_URL, table_prefix=prefix, pool_min=0))
        return opened[-1]

    def close() -> None:
        opened[0].drop_schema()
        for store in opened:
            store.close()

    kit = StoreKit("postgres", opened[0], time.sleep, reopen, tick=REAL_TICK, real_clock=True)
    kit.closers.append(close)
    return kit


# name -> factory(tmp_path) -> StoreKit; a factory calls pytest.skip when its server is absent
STORE_KINDS: dict[str, Callable[[Path], StoreKit]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "postgres": _postgres,
}


# The same kinds behind a process-local replay cache (stores/cached.py). Not part of the
# ``kit`` fixture everywhere (it would double the conformance suite): the store contract and
# the model test take them through :func:`kit_fixture`, tests/stores/test_cached.py too.
CACHE_RECORDS = 1000


def cached_kit(base: StoreKit, max_records: int = CACHE_RECORDS) -> StoreKit:
    """``base`` with a :class:`CachedStore` on top; ``reopen`` is another process (own cache)."""
    from retrysafe.stores.cached import CachedStore

    def wrap(store: DualStore) -> DualStore:
        return CachedStore(store, max_records, clock=base.clock)

    return StoreKit(
        f"{base.name}+cache",
        wrap(base.store),
        base.advance,
        lambda: wrap(base.reopen()),
        tick=base.tick,
        real_clock=base.real_clock,
        closers=base.closers,
        clock=base.clock,
    )


CACHED_KINDS: dict[str, Callable[[Path], StoreKit]] = {
    f"{name}+cache": (lambda tmp_path, make=make: cached_kit(make(tmp_path)))
    for name, make in STORE_KINDS.items()
}


# A three-node Redis Cluster of the test session's own: not in STORE_KINDS (starting it costs
# a second), only where a module asks for it; its server comes from the ``cluster_url`` fixture
# (tests/stores/conftest.py), so only modules under a conftest that defines it can ask.
REDIS_CLUSTER = "redis-cluster"


def kit_fixture(kinds: Iterable[str], name: str = "kit") -> Any:
    """A ``kit`` fixture over ``kinds`` (names of STORE_KINDS or CACHED_KINDS, or
    REDIS_CLUSTER), for a module that runs other kinds than the suite-wide one:
    ``kit = kit_fixture([...])``; ``name`` gives a second fixture beside it."""
    every = {**STORE_KINDS, **CACHED_KINDS}

    @pytest.fixture(name=name, params=list(kinds))
    def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKit]:
        if request.param == REDIS_CLUSTER:
            made = redis_kit(request.getfixturevalue("cluster_url"), REDIS_CLUSTER)
        else:
            made = every[request.param](tmp_path)
        try:
            yield made
        finally:
            made.close()

    return kit


ALL_KINDS = [*sorted(STORE_KINDS), *sorted(CACHED_KINDS)]


def require_service(name: str, reason: str) -> None:
    """Skip when a service is missing on a developer machine; fail loudly in CI."""
    if IN_CI:
        pytest.fail(f"{name} is required in CI but unavailable: {reason}")
    else:  # allow_module_level: also where a whole test module needs the service or package
        why = f"{name} not available ({reason}); install or start it"
        pytest.skip(why, allow_module_level=True)

"""The real-clock stall guard of the store kits (``StoreKit.within``, ``rerun_when_stalled``).

A stall is made, never waited for: a kit whose tick is a millisecond sleeps 20 ms inside a
two-tick window (a lower bound: the sleep takes at least that long), and a kit whose tick is
FAR seconds never stalls in a block that does not wait.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest

from kit.stores import FAR, STALL_ATTEMPTS, Stalled, StoreKit, rerun_when_stalled
from retrysafe.stores.memory import MemoryStore


def _kit(tick: float, real_clock: bool = True) -> StoreKit:
    store = MemoryStore()
    return StoreKit("probe", store, time.sleep, lambda: store, tick=tick, real_clock=real_clock)


STALLS = _kit(tick=0.001)  # a 20 ms sleep overruns any window of a few ticks
NEVER_STALLS = _kit(tick=float(FAR))  # a block that does not wait never overruns it


def _window(kit: StoreKit, ticks: float, stall: bool, raising: Exception | None = None) -> None:
    """A ``kit.within(ticks)`` block that sleeps 20 ms if told to stall, then raises ``raising``."""
    with kit.within(ticks):
        if stall:
            time.sleep(0.02)
        if raising is not None:
            raise raising


def test_a_window_that_overran_raises_stalled() -> None:
    with pytest.raises(Stalled, match="probe: a 2-tick window"):
        _window(STALLS, 2, stall=True)


def test_an_assertion_in_a_window_that_overran_is_void_and_chained() -> None:
    with pytest.raises(Stalled) as info:
        _window(STALLS, 2, stall=True, raising=AssertionError("the deadline had passed"))
    assert isinstance(info.value.__cause__, AssertionError)


def test_an_assertion_in_a_window_in_time_fails_as_itself() -> None:
    with pytest.raises(AssertionError, match="a real failure"):
        _window(NEVER_STALLS, 1, stall=False, raising=AssertionError("a real failure"))
    _window(NEVER_STALLS, 1, stall=False)  # and a window in time raises nothing


def test_a_fake_clock_never_stalls() -> None:
    fake = _kit(tick=0.001, real_clock=False)
    _window(fake, 1, stall=True)
    with pytest.raises(AssertionError, match="as itself"):  # never turned into Stalled
        _window(fake, 1, stall=True, raising=AssertionError("as itself"))


def test_a_stalled_test_runs_again_until_an_attempt_is_in_time() -> None:
    calls: list[int] = []

    @rerun_when_stalled
    def body(n: int) -> int:
        calls.append(n)
        early = len(calls) < 3
        _window(STALLS if early else NEVER_STALLS, 2, stall=early)
        return len(calls)

    assert body(7) == 3
    assert calls == [7, 7, 7]


def test_a_test_that_stalls_every_time_gives_up_saying_so() -> None:
    calls: list[None] = []

    @rerun_when_stalled
    def body() -> None:
        calls.append(None)
        _window(STALLS, 2, stall=True)

    with pytest.raises(pytest.fail.Exception) as info:
        body()
    assert len(calls) == STALL_ATTEMPTS == 5
    message = str(info.value)
    assert f"every one of {STALL_ATTEMPTS} attempts stalled" in message
    assert message.count("a 2-tick window") == STALL_ATTEMPTS


def test_a_real_failure_is_not_run_again() -> None:
    calls: list[None] = []

    @rerun_when_stalled
    def body() -> None:
        calls.append(None)
        _window(NEVER_STALLS, 1, stall=False, raising=AssertionError("wrong answer"))

    with pytest.raises(AssertionError, match="wrong answer"):
        body()
    assert len(calls) == 1


async def test_an_async_test_is_run_again_too() -> None:
    calls: list[None] = []

    @rerun_when_stalled
    async def body() -> str:
        calls.append(None)
        first = len(calls) == 1
        _window(STALLS if first else NEVER_STALLS, 2, stall=first)
        return "done"

    assert inspect.iscoroutinefunction(body)  # pytest-asyncio still runs it as a coroutine
    assert await body() == "done"
    assert len(calls) == 2


def test_the_wrapper_keeps_what_pytest_reads() -> None:
    def original(kit: StoreKit, response: Any, wakes: object = None) -> None:
        """Doc."""

    wrapped = rerun_when_stalled(pytest.mark.parametrize("response", [1])(original))
    # pytest finds fixtures and parameters by the signature (through __wrapped__) and marks
    # by the function's attributes: both survive the decorator, in either order.
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert (wrapped.__name__, wrapped.__doc__) == ("original", "Doc.")
    assert [m.name for m in wrapped.pytestmark] == ["parametrize"]
    assert not inspect.iscoroutinefunction(wrapped)

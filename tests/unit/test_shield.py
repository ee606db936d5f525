"""`shielded`: runs in the caller's task; gets a task of its own only if the caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from retrysafe._shield import shield_awaited, shielded


async def test_a_coroutine_that_never_suspends_finishes_without_a_loop_trip() -> None:
    ran_meanwhile: list[str] = []
    asyncio.get_running_loop().call_soon(ran_meanwhile.append, "loop turned")

    async def at_once() -> int:
        return 42

    assert await shielded(at_once()) == 42
    assert ran_meanwhile == []  # no other callback ran: we never yielded to the loop


async def test_a_suspending_coroutine_is_resumed_to_its_result() -> None:
    async def slow() -> str:
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        return "done"

    assert await shielded(slow()) == "done"


async def test_exceptions_propagate_before_and_after_suspending() -> None:
    async def fails_at_once() -> None:
        raise KeyError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    with pytest.raises(KeyError):
        await shielded(fails_at_once())
    with pytest.raises(ValueError, match="later"):
        await shielded(fails_later())


async def _through_shielded(coro: Coroutine[Any, Any, bool]) -> bool:
    return await shielded(coro)


async def _through_shield_awaited(coro: Coroutine[Any, Any, bool]) -> bool:
    return await shield_awaited(coro)


@pytest.mark.parametrize("through", [_through_shielded, _through_shield_awaited])
async def test_cancelling_the_caller_lets_the_coroutine_finish(
    through: Callable[[Coroutine[Any, Any, bool]], Coroutine[Any, Any, bool]],
) -> None:
    gate = asyncio.Event()
    finished: list[str] = []

    async def settle() -> bool:
        await gate.wait()
        finished.append("settled")
        return True

    caller = asyncio.create_task(through(settle()))
    await asyncio.sleep(0)  # the caller starts settle() and suspends on the gate
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == []
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == ["settled"]
    assert await through(settle()) is True  # uncancelled, the result comes back


async def test_the_coroutine_sees_values_sent_back_by_the_task() -> None:
    loop = asyncio.get_running_loop()

    async def waits_for_future() -> int:
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_soon(fut.set_result, 7)
        return await fut + 1

    assert await shielded(waits_for_future()) == 8


async def test_a_suspending_coroutine_runs_in_the_callers_task() -> None:
    async def where() -> tuple[object, object]:
        before = asyncio.current_task()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        return before, asyncio.current_task()

    caller = asyncio.current_task()
    assert await shielded(where()) == (caller, caller)  # no task was made for it


async def test_cancelling_the_caller_never_cancels_the_future_the_coroutine_awaits() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    seen: list[int] = []

    async def settle() -> None:
        seen.append(await reply)

    caller = asyncio.create_task(shielded(settle()))
    await asyncio.sleep(0)  # settle() now waits on `reply`
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not reply.cancelled()
    reply.set_result(5)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [5]  # finished in a task of its own, with the real reply


async def _turns_to_await(awaiting: Callable[[asyncio.Future[int]], Any]) -> int:
    """Loop turns between a reply arriving and the caller resuming (sleeps of 0 counted)."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    caller = asyncio.create_task(awaiting(reply))
    await asyncio.sleep(0)  # the caller waits on the reply
    reply.set_result(1)
    turns = 0
    while not caller.done():
        await asyncio.sleep(0)
        turns += 1
    assert caller.result() == 1
    return turns


async def test_a_shielded_wait_costs_no_more_loop_turns_than_a_plain_one() -> None:
    async def plain(reply: asyncio.Future[int]) -> int:
        return await reply

    async def inline(reply: asyncio.Future[int]) -> int:
        return await shield_awaited(plain(reply))

    async def as_shield(reply: asyncio.Future[int]) -> int:
        return await asyncio.shield(plain(reply))

    assert await _turns_to_await(inline) == await _turns_to_await(plain)
    assert await _turns_to_await(as_shield) > await _turns_to_await(plain)


async def test_a_cancel_message_and_timeouts_reach_the_caller() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()

    async def settle() -> int:
        return await reply

    caller = asyncio.create_task(shielded(settle()))
    await asyncio.sleep(0)
    caller.cancel("client gone")
    with pytest.raises(asyncio.CancelledError, match="client gone"):
        await caller
    with pytest.raises(TimeoutError):  # asyncio.timeout cancels and uncancels the task
        async with asyncio.timeout(0.01):
            await shielded(settle())
    assert not reply.done()
    reply.set_result(3)
    assert await shielded(settle()) == 3


async def test_cancelling_once_the_reply_is_in_still_lets_the_coroutine_finish() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    finished: list[int] = []

    async def settle() -> None:
        finished.append(await reply)
        await asyncio.sleep(0)
        finished.append(-1)

    caller = asyncio.create_task(shielded(settle()))
    await asyncio.sleep(0)
    reply.set_result(4)  # the caller's wake-up is scheduled; cancel before it runs
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == [4, -1]

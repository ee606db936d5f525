"""Thin drivers: perform the checker's steps with an ``httpx.Client`` or ``httpx.AsyncClient``.

Concurrent probes go out at once (threads for the sync client, tasks for the async one). An
exchange that fails comes back as an :class:`Answer` with status 0 and the error, never as an
exception: a crash or a reset connection is something the report says. That includes what an
in-process transport raises (the app's own exception through ``ASGITransport``, a header
``WSGITransport`` cannot pass on): it is the endpoint's answer to that probe.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from retrysafe.check._cases import Flow
from retrysafe.check._steps import Answer, Batch, Overlap, Pause, Probe, Report, Step, Target


def _request(
    client: httpx.Client | httpx.AsyncClient, target: Target, probe: Probe
) -> httpx.Request:
    # As bytes: a probe may carry a key httpx would refuse to encode (the non-ASCII case).
    headers = [
        (name.encode("ascii"), value if isinstance(value, bytes) else value.encode("utf-8"))
        for name, value in (*target.headers, *probe.key_headers)
    ]
    body = target.body if probe.body is None else probe.body
    return client.build_request(target.method, target.url, headers=headers, content=body)


def _answer(response: httpx.Response, body: bytes) -> Answer:
    return Answer(response.status_code, tuple(response.headers.multi_items()), body)


def _failed(exc: Exception) -> Answer:
    return Answer(0, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def run_sync(client: httpx.Client, target: Target, flow: Flow) -> Report:
    def send(probe: Probe) -> Answer:
        try:
            response = client.send(_request(client, target, probe))
        except Exception as exc:  # see the module docstring
            return _failed(exc)
        return _answer(response, response.content)

    def overlap(step: Overlap) -> tuple[Answer, ...]:
        second: list[Answer] = []
        retry = threading.Thread(target=lambda: second.append(send(step.second)))
        try:
            response = client.send(_request(client, target, step.first), stream=True)
        except Exception as exc:  # see the module docstring
            return (_failed(exc), send(step.second))
        try:
            retry.start()  # the status line is in: the first answer is on its way
            first = _answer(response, response.read())
        except Exception as exc:  # see the module docstring
            first = _failed(exc)
        finally:
            response.close()
            if retry.ident is not None:
                retry.join()
        return (first, second[0])

    def perform(step: Step) -> tuple[Answer, ...]:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return ()
        if isinstance(step, Overlap):
            return overlap(step)
        if len(step.probes) == 1:
            return (send(step.probes[0]),)
        with ThreadPoolExecutor(max_workers=len(step.probes)) as pool:
            return tuple(pool.map(send, step.probes))

    return _drive(flow, perform)


async def run_async(client: httpx.AsyncClient, target: Target, flow: Flow) -> Report:
    async def send(probe: Probe) -> Answer:
        try:
            response = await client.send(_request(client, target, probe))
        except Exception as exc:  # see the module docstring
            return _failed(exc)
        return _answer(response, response.content)

    async def overlap(step: Overlap) -> tuple[Answer, ...]:
        try:
            response = await client.send(_request(client, target, step.first), stream=True)
        except Exception as exc:  # see the module docstring
            return (_failed(exc), await send(step.second))
        retry = asyncio.ensure_future(send(step.second))  # the first answer is on its way
        try:
            first = _answer(response, await response.aread())
        except Exception as exc:  # see the module docstring
            first = _failed(exc)
        finally:
            await response.aclose()
        return (first, await retry)

    async def perform(step: Step) -> tuple[Answer, ...]:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return ()
        if isinstance(step, Overlap):
            return await overlap(step)
        assert isinstance(step, Batch)
        return tuple(await asyncio.gather(*(send(p) for p in step.probes)))

    try:
        step = next(flow)
        while True:
            step = flow.send(await perform(step))
    except StopIteration as done:
        report: Report = done.value
        return report


def _drive(flow: Flow, perform: Callable[[Step], tuple[Answer, ...]]) -> Report:
    try:
        step = next(flow)
        while True:
            step = flow.send(perform(step))
    except StopIteration as done:
        report: Report = done.value
        return report

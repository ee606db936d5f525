"""Load generators for ``bench/e2e.py``: wrk when installed, else a small Python one.

Both keep ``connections`` HTTP/1.1 connections busy for ``seconds``, each sending the next
``POST /charges`` as soon as the last answer arrived (a closed loop), and report how many
answers came back, how many were not 2xx, and the latency's median and 99th percentile.
A *first* run sends a fresh ``Idempotency-Key`` per request, a *replay* run one fixed key.

wrk (Debian's ``wrk`` package) is driven by a Lua script written per run; its ``done`` hook
prints one JSON line, parsed here. The Python generator runs in a process of its own (so
the driver's imports weigh nothing) and is slower than wrk: at 100 connections on a fast
server it can be the bottleneck, which the report says by naming the generator.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BODY = b'{"amount": 1000, "currency": "eur"}'
MARK = "E2E-RESULT "


@dataclass(frozen=True)
class Load:
    """What one run of a load generator saw."""

    requests: int  # answers received
    seconds: float
    errors: int  # answers not 2xx, plus socket errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def generators() -> list[str]:
    return ["wrk", "python"] if shutil.which("wrk") else ["python"]


def run_load(
    generator: str, url: str, connections: int, seconds: float, key: str, fresh: bool
) -> Load:
    """``fresh``: key + a per-request suffix (first executions); else ``key`` every time."""
    if generator == "wrk":
        return _wrk(url, connections, seconds, key, fresh)
    return _python(url, connections, seconds, key, fresh)


# -- wrk ---------------------------------------------------------------------------------------

_LUA = """
local prefix, fresh = %(key)s, %(fresh)s
local body = %(body)s
local sent = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  local key = prefix
  if fresh then
    sent = sent + 1
    key = prefix .. "-" .. tid .. "-" .. sent
  end
  return wrk.format("POST", "/charges",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = key}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def _wrk(url: str, connections: int, seconds: float, key: str, fresh: bool) -> Load:
    script = _LUA % {
        "key": _lua_string(key),
        "fresh": "true" if fresh else "false",
        "body": _lua_string(BODY.decode()),
        "mark": MARK,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        threads = 1 if connections == 1 else 2  # two cores: more threads only contend
        duration = f"{max(1, round(seconds))}s"  # wrk counts whole seconds
        command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--timeout", "10s"]
        out = subprocess.run(
            [*command, "-s", f.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    line = next(line for line in out.splitlines() if line.startswith(MARK))
    doc = json.loads(line[len(MARK) :])
    return Load(
        requests=doc["requests"],
        seconds=doc["us"] / 1e6,
        errors=doc["errors"],
        p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000,
    )


# -- the Python generator ----------------------------------------------------------------------


def _python(url: str, connections: int, seconds: float, key: str, fresh: bool) -> Load:
    args = json.dumps([url, connections, seconds, key, fresh])
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(next(line for line in out.splitlines() if line.startswith(MARK))[len(MARK) :])
    return Load(**doc)


async def _connection(
    host: str, port: int, key: str, fresh: bool, worker: int, stop: float, out: list[float]
) -> int:
    """One keep-alive connection in a closed loop until ``stop``; latencies go to ``out``;
    returns its error count (non-2xx answers, broken connections)."""
    errors = 0
    sent = 0
    reader = writer = None
    while time.perf_counter() < stop:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)  # a refused connect: do not spin
                continue
        assert reader is not None
        sent += 1
        k = f"{key}-{worker}-{sent}" if fresh else key
        head = (
            f"POST /charges HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: {k}\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        )
        started = time.perf_counter()
        try:
            writer.write(head.encode() + BODY)
            status_line = await reader.readuntil(b"\r\n")
            headers = await reader.readuntil(b"\r\n\r\n")
            length, close = 0, False
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            errors += 1
            writer.close()
            reader = writer = None
            continue
        out.append(time.perf_counter() - started)
        if not status_line.split(b" ")[1].startswith(b"2"):
            errors += 1
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()
    return errors


async def _generate(url: str, connections: int, seconds: float, key: str, fresh: bool) -> Load:
    host, _, port = url.removeprefix("http://").partition(":")
    latencies: list[float] = []
    started = time.perf_counter()
    stop = started + seconds
    errors = await asyncio.gather(
        *(_connection(host, int(port), key, fresh, i, stop, latencies) for i in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Load(len(latencies), elapsed, sum(errors), statistics.median(ordered) * 1000, p99 * 1000)


if __name__ == "__main__":  # the generator's own process: argv[1] is its JSON arguments
    load = asyncio.run(_generate(*json.loads(sys.argv[1])))
    print(MARK + json.dumps({**load.__dict__}))

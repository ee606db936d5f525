"""Helpers for the gateway tests: a real upstream process, in-process and child-process gateways.

The upstream (``gateway_upstream_child.py``) runs in its own process so it can really crash.
Gateways run in-process (uvicorn in a thread, on a socket bound before the thread starts, so
there is no start-up race) or as ``python -m retrysafe.cli proxy`` processes for the
multi-process tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from kit.children import child_argv, child_env
from retrysafe.gateway import Gateway
from retrysafe.gateway._serve import uvicorn_config
from retrysafe.stores._base import DualStore

# [policy] anonymous = "shared": for gateway processes of tests that are not about who owns a key.
SHARED_SCOPE_CONFIG = Path(__file__).with_name("gateway_shared_scope.toml")
START_TIMEOUT = 20.0


class Upstream:
    """The test upstream process; executions are counted from its append-only log."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Upstream:
        cmd = child_argv("gateway_upstream_child", str(self.log), str(self.port))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the socket listens
        assert line.startswith("PORT "), f"upstream did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    def wait_exit(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=START_TIMEOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:  # a failed test left a handler stuck: no orphans
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str, method: str = "POST") -> int:
        """How many times ``method path`` ran at the upstream (crashes included)."""
        if not self.log.exists():
            return 0
        return self.log.read_text().splitlines().count(f"{method} {path}")


@dataclass
class RunningGateway:
    app: Gateway
    url: str

    @property
    def store(self) -> DualStore:
        return self.app.store


@contextmanager
def serve_in_thread(app: Gateway) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)  # clients may connect at once; the kernel queues them until uvicorn runs
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app.config, app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        sock.close()


GatewayFactory = Callable[..., RunningGateway]


class GatewayProcess:
    """``python -m retrysafe.cli proxy ...`` (the real entry point) as a child process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        if "--config" not in args:  # these tests send no credentials: one explicit shared scope
            args = ("--config", str(SHARED_SCOPE_CONFIG), *args)
        cmd = [sys.executable, "-m", "retrysafe.cli", "proxy", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.ready = threading.Event()
        self.seen = threading.Condition()
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(START_TIMEOUT) or not self._healthy():
            self.stop()
            raise AssertionError("gateway did not start:\n" + "".join(self.output))

    def _healthy(self) -> bool:
        """Probe the health endpoint until it answers: uvicorn logs "running" once the port is
        bound, but with --workers the socket only listens when a worker has started."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                return httpx.get(self.url + "/_retrysafe/health").status_code == 200
            except httpx.ConnectError:
                time.sleep(0.05)  # readiness polling, bounded by the deadline
        return False

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.seen:
                self.output.append(line)
                self.seen.notify_all()
            if "Uvicorn running on" in line:  # logged once the socket listens
                self.ready.set()

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Block until the gateway has logged a line containing ``text``."""
        with self.seen:
            found = self.seen.wait_for(lambda: any(text in line for line in self.output), timeout)
        assert found, f"gateway never logged {text!r}:\n" + "".join(self.output)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def free_port() -> int:
    """A port that was free a moment ago (the CLI binds by number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManualClock:
    """A store clock the test moves (thread-safe enough for one writer)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_for(awaitable: Any, timeout: float = 10.0) -> Any:
    """Bound every coordination step, so a broken stream fails the test instead of hanging."""
    return await asyncio.wait_for(awaitable, timeout)

"""Real servers for ``bench/e2e.py``: uvicorn (ASGI) and gunicorn (WSGI), N workers each.

Each server is its own process group on a free loopback port, running this checkout's
``src`` (``PYTHONPATH``) with the app of one variant (``e2e_apps.py``). uvicorn runs on uvloop
and httptools when they are installed (what ``uvicorn[standard]`` gives), else on asyncio and
h11; gunicorn runs threaded workers (``gthread``, 8 threads each), which keep connections
alive as a load generator expects.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
START_TIMEOUT = 60.0
BODY = json.dumps({"amount": 1000, "currency": "eur"}).encode()


@dataclass(frozen=True)
class ServerKind:
    """A server and how many workers it runs: ``uvicorn-1``, ``gunicorn-2``..."""

    server: str  # "uvicorn" or "gunicorn"
    workers: int

    @property
    def name(self) -> str:
        return f"{self.server}-{self.workers}"

    @property
    def door(self) -> str:
        return "asgi" if self.server == "uvicorn" else "wsgi"

    @classmethod
    def parse(cls, name: str) -> ServerKind:
        server, _, workers = name.partition("-")
        if server not in ("uvicorn", "gunicorn") or not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"server {name!r}: use uvicorn-N or gunicorn-N")
        return cls(server, int(workers))


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uvicorn_flavour() -> tuple[str, str]:
    """The loop and HTTP parser uvicorn runs on here (uvicorn[standard]'s when installed)."""
    return (
        "uvloop" if has("uvloop") else "asyncio",
        "httptools" if has("httptools") else "h11",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One running server: ``kind`` serving ``variant``, its execution counter file."""

    kind: ServerKind
    variant: str
    env: dict[str, str]
    counter: Path
    log: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind.server == "uvicorn":
            loop, parser = uvicorn_flavour()
            return [
                sys.executable, "-m", "uvicorn", "e2e_apps:asgi_app", "--factory",
                "--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.kind.workers), "--loop", loop, "--http", parser,
                "--no-access-log", "--log-level", "warning", "--backlog", "2048",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "gunicorn", "e2e_apps:wsgi_app()", "--chdir", str(BENCH),
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.kind.workers),
            "--worker-class", "gthread", "--threads", "8", "--log-level", "warning",
            "--backlog", "2048",
        ]  # fmt: skip

    def start(self) -> None:
        if not has(self.kind.server):
            raise RuntimeError(f"{self.kind.server} is not installed in this environment")
        self.counter.touch()
        env = {
            **os.environ,
            **self.env,
            "E2E_VARIANT": self.variant,
            "E2E_COUNTER": str(self.counter),
            "PYTHONPATH": os.pathsep.join([str(SRC), str(BENCH)]),
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=log, start_new_session=True
            )

    def wait_ready(self) -> None:
        """Until the port answers a request (every worker may take a moment more)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind.name} {self.variant} exited: see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind.name} {self.variant} did not start") from None
                time.sleep(0.05)

    def post(self, key: str) -> tuple[int, bytes]:
        """One request with ``key`` (set-up checks, outside any timed run)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            conn.request("POST", "/charges", BODY, headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

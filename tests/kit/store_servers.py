"""Throwaway servers for the backend tests: Redis instances, a Redis Cluster, a PostgreSQL
cluster, each on free loopback ports, plus a TCP proxy that counts round trips on the wire.

The shared Redis (6379) and PostgreSQL (5432) are never stopped: tests that kill a server
start their own.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from kit.stores import POSTGRES_URL, REDIS_URL, require_service
from kit.stores import server_down as shared_down

__all__ = ["POSTGRES_URL", "REDIS_URL", "require", "shared_down"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free and valid too.

    Each pytest-xdist worker (gw0, gw1, ...) draws from a range of its own, so two workers
    starting their clusters at once cannot both pick a port that was free when checked."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    span = 1000
    low = 20000 + (int(worker) % 10 if worker.isdigit() else 0) * span
    for _ in range(200):
        port = random.randint(low, low + span - 1)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A redis-server process of our own, which tests may kill and start again."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server dies too
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """A stalled server (SIGSTOP) until the block ends: connections stay open, nothing is
        answered. Unlike a busy script it stalls for as long as the test needs, so a call that
        fails inside the block can only have been failed by the client's own timeout."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)


def redis_available() -> str | None:
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH"
    return None


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Three masters, no replicas, created with ``redis-cli --cluster create``."""
    servers = [
        RedisServer(
            directory / f"n{i}",
            free_cluster_port(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        )
        for i in range(3)
    ]
    try:
        for server in servers:
            server.start()
        nodes = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # every node must agree the cluster is up
            states = [
                subprocess.run(
                    ["redis-cli", "-p", str(s.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for s in servers
            ]
            if all("cluster_state:ok" in st for st in states):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")
        yield f"redis+cluster://{nodes[0]}"
    finally:
        for server in servers:
            server.kill()


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb as the postgres user) on a spare port."""

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and postgres must own this.
        self.directory = Path(tempfile.mkdtemp(prefix="retrysafe-pg-"))
        self.data = self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout: float = 60) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        return self

    def start(self) -> PostgresServer:
        opts = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.directory / "log"),
            "start",
        )
        _wait_port(self.port)
        return self

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self) -> None:
        """Stop at once (SIGQUIT via immediate mode: no clean shutdown, like a crash)."""
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )


def postgres_available() -> str | None:
    if not (PG_BIN / "initdb").exists():
        return f"no initdb in {PG_BIN}"
    return None


class CountingProxy:
    """A loopback TCP proxy that counts round trips: bursts of client bytes that follow a
    server reply (or start the conversation). Protocol-agnostic, so it counts what the wire
    carries, not what a client library says it did."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self.round_trips = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.round_trips = 0

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"awaiting_reply": False}
            threading.Thread(
                target=self._pump, args=(client, server, True, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, False, state), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, upstream: bool, state: dict[str, bool]
    ) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if upstream and not state["awaiting_reply"]:
                        self.round_trips += 1
                    state["awaiting_reply"] = upstream
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self._listener.close()


def require(name: str, why: str | None) -> None:
    """Skip (developer machine) or fail (CI) when ``why`` says a service is missing."""
    if why is not None:
        require_service(name, why)

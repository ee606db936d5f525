"""Issue 8's whole scenario: a ledger app, two workers SIGKILLed repeatedly, a lossy proxy.

- **The app** (``atomic_ledger_child.py``): ``POST /charges`` books a charge as a row in the
  store's own database (a SQLite file, or a PostgreSQL database), behind retrysafe's ASGI
  middleware, with atomic completion or with plain completion (the contrast).
- **Two worker processes** under uvicorn, accepting on one listening socket that this process
  holds (pre-forked workers, as gunicorn runs them): a request queued while both are down waits
  in the socket's backlog for the next worker.
- **A supervisor** thread per worker replaces it with a warm spare whenever it dies.
- **A killer** thread SIGKILLs a random running worker every ``kill_every`` seconds, wherever
  it is, ``kills`` times. Random kills rarely land between a write and its completion, so every
  ``crash_every``-th charge also SIGKILLs its own worker right there, once (a deterministic
  kill in the window; see the worker).
- **A proxy** on loopback (the client tests' ``FaultProxy``) passes every request on and, for
  a share ``drop`` of them, lets the worker answer and then resets the client's connection
  instead of relaying the answer: the charge was made, the client cannot know.
- **The client**: ``clients`` threads sharing one ``httpx.Client`` over retrysafe's
  ``IdempotentTransport`` (one key per logical charge, kept across retries) with a SQLite
  dead-letter queue; calls that exhaust their attempts are parked, and the queue is replayed
  (same key, same body) once the killer has stopped, until it is empty.

:func:`run_ledger` returns a :class:`LedgerRun` with what the ledger holds per charge. Run it
bigger from the repository root with ``PYTHONPATH=tests python -m kit.atomic_ledger
--charges 1000 --kills 100`` (``--help``), or the test with ``RETRYSAFE_LEDGER_CHARGES=1000``
(any :class:`LedgerConfig` field, upper-cased).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from kit.children import child_argv, child_env
from kit.client_servers import FaultProxy
from retrysafe._fingerprint import RequestFacts
from retrysafe._keyring import configured_secret
from retrysafe._policy import storage_id
from retrysafe._scopes import PrincipalKey, shared_scope
from retrysafe.client import CallFailed, IdempotentTransport, RetryPolicy
from retrysafe.client.dlq import DeadLetterQueue
from retrysafe.stores.sqlite import SQLiteStore

SQLITE_LEDGER = (
    "CREATE TABLE IF NOT EXISTS ledger "
    "(id INTEGER PRIMARY KEY, key TEXT NOT NULL, cents INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class LedgerConfig:
    """The scenario's sizes. The defaults fit a CI run (a few seconds per database and mode)."""

    charges: int = 60  # logical charges, each with its own key
    clients: int = 4  # client threads
    workers: int = 2
    spares: int = 2  # workers started ahead (in parallel), ready to replace a dead one
    kills: int = 6  # SIGKILLs by the killer thread
    kill_every: float = 0.5  # seconds between them
    crash_every: int = 10  # every n-th charge kills its worker after the write, once
    drop: float = 0.3  # share of answers the proxy cuts after the worker executed
    lease: float = 0.5  # the claim's lease: how soon a retry takes a dead worker's key over
    wait: float = 5.0  # how long a duplicate waits for the attempt in flight
    attempts: int = 2  # the client's tries per call before it parks the call
    replay_rounds: int = 30  # DLQ replay passes at most
    seed: int = 8

    @classmethod
    def from_env(cls, prefix: str = "RETRYSAFE_LEDGER_") -> LedgerConfig:
        """Overrides from the environment: ``RETRYSAFE_LEDGER_CHARGES=2000`` and so on."""
        found: dict[str, Any] = {}
        for name, value in asdict(cls()).items():
            raw = os.environ.get(prefix + name.upper())
            if raw is not None:
                found[name] = type(value)(raw)
        return cls(**found)


@dataclass
class Database:
    """Where the store and the ledger live: a SQLite file, or a table prefix in PostgreSQL."""

    kind: str  # "sqlite" | "postgres"
    path: str = ""  # sqlite
    url: str = ""  # postgres
    prefix: str = ""  # postgres: the store's and the ledger's table prefix

    def worker_config(self) -> dict[str, Any]:
        return {"db": self.kind, "path": self.path, "url": self.url, "prefix": self.prefix}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        sql = sql.replace("{p}", self.prefix if self.kind == "postgres" else "")
        if self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                return list(conn.execute(sql).fetchall())
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return list(conn.execute(sql).fetchall())

    def ledger(self) -> dict[str, list[int]]:
        """Committed rows (ids) per charge."""
        rows: dict[str, list[int]] = {}
        for id, key in self.query("SELECT id, key FROM {p}ledger ORDER BY id"):
            rows.setdefault(str(key), []).append(int(id))
        return rows

    def records(self) -> dict[str, str]:
        """Idempotency records' states by storage id (one record per key)."""
        table = "{p}records" if self.kind == "postgres" else "retrysafe_records"
        return {str(id): str(state) for id, state in self.query(f"SELECT id, state FROM {table}")}


def sqlite_database(path: Path) -> Database:
    """A fresh SQLite file holding the store's tables and the application's ledger."""
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(SQLITE_LEDGER)
        conn.commit()
    return Database("sqlite", path=str(path))


@dataclass
class LedgerRun:
    """What one run did and what the ledger holds afterwards."""

    db: str
    atomic: bool
    config: LedgerConfig
    charges: int = 0
    answered: int = 0  # calls answered 201 in the run itself
    parked: int = 0  # calls parked in the DLQ during the run
    replay_rounds: int = 0
    left_in_dlq: int = 0
    kills: int = 0  # by the killer thread
    forced_crashes: int = 0  # workers that SIGKILLed themselves between write and completion
    deaths: int = 0  # worker exits seen by the supervisors (kills + forced crashes)
    dropped: int = 0  # answers the proxy cut after the worker executed
    rows: int = 0
    missing: list[str] = field(default_factory=list)  # charges with no ledger row
    doubled: dict[str, int] = field(default_factory=dict)  # charge -> rows, where rows > 1
    unexpected: list[str] = field(default_factory=list)  # ledger rows for no known charge
    wrong_answers: list[str] = field(default_factory=list)  # 201s naming another row
    records: dict[str, int] = field(default_factory=dict)  # record state -> count
    unfinished: dict[str, str] = field(default_factory=dict)  # charge -> its record's state
    dlq_states: dict[str, int] = field(default_factory=dict)  # parked calls' final states
    keys: dict[str, str] = field(default_factory=dict)  # charge -> its idempotency key
    seconds: float = 0.0
    startup: float = 0.0  # seconds until both workers served
    charging: float = 0.0  # seconds the clients took, kills and all

    @property
    def extra_rows(self) -> int:
        """Re-runs that charged again: rows beyond the first of each charge."""
        return sum(n - 1 for n in self.doubled.values())

    def summary(self) -> str:
        mode = "atomic" if self.atomic else "plain"
        return (
            f"{self.db}/{mode}: {self.charges} charges, {self.kills} kills + "
            f"{self.forced_crashes} forced crashes after the write ({self.deaths} deaths), "
            f"{self.dropped} answers dropped, {self.parked} parked, "
            f"{self.replay_rounds} replay round(s), {self.left_in_dlq} left in the DLQ -> "
            f"{self.rows} rows, {len(self.doubled)} charged twice or more "
            f"({self.extra_rows} extra rows), {len(self.missing)} missing, "
            f"records {self.records}, DLQ {self.dlq_states}; {self.seconds:.1f} s "
            f"(start {self.startup:.1f} s, charges {self.charging:.1f} s)"
        )


class Workers:
    """``count`` worker processes on one listening socket, each replaced when it dies, and a
    killer that SIGKILLs a random running one every ``kill_every`` seconds, ``kills`` times.

    A dead worker is replaced by a *spare*: a process started ahead of time that has imported
    everything and opened its pool, and waits for a ``go`` line before it accepts (a Python
    process takes a second or more to start on a loaded machine; a supervisor that forks from a
    warm master, like gunicorn's, replaces a worker as fast).
    """

    def __init__(self, worker_config: dict[str, Any], config: LedgerConfig) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = int(self.sock.getsockname()[1])
        self.worker_config = {**worker_config, "fd": self.sock.fileno()}
        self.kill_every, self.max_kills = config.kill_every, config.kills
        self.rng = random.Random(config.seed)
        self.lock = threading.Lock()
        self.running: list[subprocess.Popen[str] | None] = [None] * config.workers
        self.spawned: list[subprocess.Popen[str]] = []
        self.spares: queue.Queue[subprocess.Popen[str]] = queue.Queue(maxsize=config.spares)
        self.stopping = threading.Event()
        self.killing = threading.Event()
        self.kills = 0
        self.deaths = 0
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._supervise, args=(slot,), daemon=True)
            for slot in range(config.workers)
        ]
        self.threads += [threading.Thread(target=self._kill, daemon=True)]
        self.threads += [
            threading.Thread(target=self._keep_spares, daemon=True) for _ in range(config.spares)
        ]

    def _keep_spares(self) -> None:
        while True:
            with self.lock:
                if self.stopping.is_set():
                    return
                proc = subprocess.Popen(
                    child_argv("atomic_ledger_child", json.dumps(self.worker_config)),
                    env=child_env(),
                    pass_fds=(self.sock.fileno(),),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.spawned.append(proc)  # __exit__ kills it, wherever it is
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "warm":
                self._failed(proc, "died while starting")
                return
            while not self.stopping.is_set():
                with contextlib.suppress(queue.Full):
                    self.spares.put(proc, timeout=0.1)
                    break

    def _supervise(self, slot: int) -> None:
        while not self.stopping.is_set():
            try:
                proc = self.spares.get(timeout=0.1)
            except queue.Empty:
                continue
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "ready":
                self._failed(proc, "died while starting to serve")
                return
            with self.lock:
                self.running[slot] = proc
            code = proc.wait()
            with self.lock:
                self.running[slot] = None
                if self.stopping.is_set():
                    return
                self.deaths += 1
            if code != -signal.SIGKILL:
                self._failed(proc, f"exited with {code}")
                return

    def _failed(self, proc: subprocess.Popen[str], what: str) -> None:
        if not self.stopping.is_set():
            self.errors.append(f"worker {proc.pid} {what}")

    def _kill(self) -> None:
        """Every ``kill_every`` s, SIGKILL a random running worker - the next one to be up if
        none is (both may be being replaced), so that the kills keep their pace."""
        while self.kills < self.max_kills and not self.stopping.wait(self.kill_every):
            while self.killing.is_set() and not self._kill_one():
                if self.stopping.wait(0.01):
                    return

    def _kill_one(self) -> bool:
        with self.lock:
            alive = [p for p in self.running if p is not None and p.poll() is None]
            if alive:
                self.rng.choice(alive).send_signal(signal.SIGKILL)
                self.kills += 1
        return bool(alive)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.running):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.02)

    def __enter__(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.stopping.set()
            procs = list(self.spawned)
        for proc in procs:
            proc.kill()  # a no-op for one already reaped
        for thread in self.threads:
            thread.join(30)
        for proc in procs:
            proc.wait(30)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.sock.close()


def _client(dlq: DeadLetterQueue, url: str, attempts: int) -> httpx.Client:
    transport = IdempotentTransport(
        httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)),
        retry=RetryPolicy(attempts=attempts, base=0.05, cap=0.5, deadline=30.0),
        budget=None,  # the retry budget would park most retries of a burst; the DLQ is tested here
        dlq=dlq,
    )
    return httpx.Client(transport=transport, base_url=url, timeout=20.0)


class Charges:
    """The client side: ``clients`` threads book every logical charge once, each call with its
    own key (the transport's), kept across retries and the DLQ replay."""

    def __init__(self, client: httpx.Client, count: int) -> None:
        self.client = client
        self.names = [f"charge-{n}" for n in range(count)]
        self.answers: dict[str, dict[str, Any]] = {}  # charge -> the 201's body
        self.parked: dict[str, str] = {}  # charge -> DLQ entry
        self.keys: dict[str, str] = {}  # charge -> idempotency key
        self._todo = iter(range(count))
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []

    def _book(self, n: int) -> None:
        name = self.names[n]
        try:
            reply = self.client.post("/charges", json={"charge": name, "n": n, "cents": 100 + n})
        except CallFailed as exc:
            if not exc.parked or not exc.key:
                raise
            self.parked[name], self.keys[name] = exc.parked, exc.key
            return
        if reply.status_code != 201:
            raise AssertionError(f"{name}: {reply.status_code} {reply.text}")
        self.answers[name], self.keys[name] = reply.json(), reply.extensions["retrysafe"].key

    def _book_all(self) -> None:
        try:
            while True:
                with self._lock:
                    n = next(self._todo, None)
                if n is None:
                    return
                self._book(n)
        except BaseException as exc:
            self._errors.append(exc)

    def run(self, threads: int) -> None:
        started = [threading.Thread(target=self._book_all) for _ in range(threads)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        if self._errors:
            raise self._errors[0]


def run_ledger(db: Database, atomic: bool, config: LedgerConfig, scratch: Path) -> LedgerRun:
    """Run the scenario once on ``db`` (fresh: its ledger empty) and read the ledger."""
    started = time.monotonic()
    run = LedgerRun(db.kind, atomic, config, charges=config.charges)
    crashes = scratch / "crashes"
    crashes.mkdir()
    worker_config = {
        **db.worker_config(),
        "atomic": atomic,
        "crashes": str(crashes),
        "crash_every": config.crash_every,
        "lease": config.lease,
        "wait": config.wait,
    }
    dlq = DeadLetterQueue(scratch / "dlq.db", rate=1e6)
    with Workers(worker_config, config) as workers:
        proxy = FaultProxy(workers.port, {"drop": config.drop}, seed=config.seed)
        try:
            workers.wait_ready()
            run.startup = time.monotonic() - started
            with _client(dlq, proxy.url, config.attempts) as client:
                charges = Charges(client, config.charges)
                workers.killing.set()
                charges.run(config.clients)
                workers.killing.clear()
                run.charging = time.monotonic() - started - run.startup
                # The killer is quiet now; the proxy still cuts answers.
                while dlq.depth() and run.replay_rounds < config.replay_rounds:
                    run.replay_rounds += 1
                    dlq.replay(client, force=True)
                run.left_in_dlq = dlq.depth()
                run.dlq_states = dict(Counter(str(entry.state) for entry in dlq.entries()))
        finally:
            proxy.close()
            dlq.close()
    assert not workers.errors, workers.errors
    run.kills, run.deaths = workers.kills, workers.deaths
    run.forced_crashes = len(list(crashes.iterdir()))
    run.dropped = proxy.counts.get("drop", 0)
    _read_ledger(run, db, charges)
    run.seconds = time.monotonic() - started
    return run


def _read_ledger(run: LedgerRun, db: Database, charges: Charges) -> None:
    run.answered, run.parked, run.keys = len(charges.answers), len(charges.parked), charges.keys
    ledger = db.ledger()
    run.rows = sum(len(ids) for ids in ledger.values())
    run.missing = [name for name in charges.names if name not in ledger]
    run.doubled = {name: len(ids) for name, ids in ledger.items() if len(ids) > 1}
    run.unexpected = sorted(set(ledger) - set(charges.names))
    run.wrong_answers = [
        name
        for name, answer in charges.answers.items()
        if answer != {"charge": name, "row": answer["row"]} or answer["row"] not in ledger[name]
    ]
    records = db.records()
    run.records = dict(Counter(records.values()))
    # The middleware runs under shared_scope (no credentials) and the suite's RETRYSAFE_SECRET.
    principal = shared_scope(RequestFacts("POST", "/charges", "", (), b""))
    secret = configured_secret(None)
    assert principal is not None
    assert secret is not None, "RETRYSAFE_SECRET is set by tests/conftest.py and main()"
    scope = PrincipalKey(secret).id_of(principal)
    states = {name: records.get(storage_id(scope, key), "none") for name, key in run.keys.items()}
    run.unfinished = {name: state for name, state in states.items() if state != "completed"}


def main(argv: list[str] | None = None) -> None:
    # As under pytest (tests/conftest.py): the workers share an operator-set principal secret.
    os.environ.setdefault("RETRYSAFE_SECRET", "retrysafe-ledger-scenario-secret-0123456789")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], action="append")
    parser.add_argument("--mode", choices=["atomic", "plain"], action="append")
    for name, value in asdict(LedgerConfig.from_env()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    kinds, modes = args.pop("db") or ["sqlite", "postgres"], args.pop("mode") or ["atomic", "plain"]
    config = LedgerConfig(**args)
    for kind in kinds:
        for mode in modes:
            with (
                tempfile.TemporaryDirectory(prefix="retrysafe-ledger-") as tmp,
                open_database(kind, Path(tmp)) as db,
            ):
                run = run_ledger(db, mode == "atomic", config, Path(tmp))
                print(run.summary(), flush=True)


@contextlib.contextmanager
def open_database(kind: str, tmp: Path) -> Iterator[Database]:
    """A fresh database of ``kind`` ("sqlite": a file in ``tmp``; "postgres": tables under a
    prefix of their own, dropped afterwards; skipped, or failed in CI, when the server is down)."""
    if kind == "sqlite":
        yield sqlite_database(tmp / "ledger.db")
        return
    from kit.atomic_pg import make_db

    for made in make_db():
        yield Database("postgres", url=made.url, prefix=made.prefix)


if __name__ == "__main__":
    main()

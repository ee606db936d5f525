"""Storage that stays bounded under load: what an operator sees on disk and in memory.

- The SQLite store's ``-wal`` file stays under its documented bound (32 MiB) however many
  clients write at once, and is emptied once writes stop (Hardening #7).
- Expired SQLite records are purged as fast as requests write new ones: the table holds about
  one TTL + retention window of records, not everything ever written (Hardening #8).
- The memory store holds at most ``max_records`` records and ``max_bytes`` bytes; it evicts
  finished records only, never a request in flight, and a store full of requests in flight
  answers 503 saying so (Hardening #12).

The SQLite tests drive the ASGI middleware under uvicorn (and, once, several OS processes on one
file) and expire records by moving the store's fake clock, never by sleeping. The long runs at a
sustained rate are in ``bench/sqlite_housekeeping.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from kit.servers import serve_asgi, serve_wsgi
from kit.stores import FakeClock
from retrysafe import open_store
from retrysafe._policy import Policy
from retrysafe._records import Claimed, Existing, State, StoredResponse
from retrysafe._scopes import shared_scope
from retrysafe.errors import ConfigurationError, StoreUnavailable
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import TABLE, SQLiteStore

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
WAL_BOUND = 32 * MiB  # docs/stores.md: the -wal file stays under this under sustained load
ANSWER = b'{"id": "ch_1", "status": "succeeded", "amount": 1000}' * 4


# -- a small application and many clients ---------------------------------------------------


class Shop:
    """An ASGI app that counts executions per key; ``/slow`` waits for ``gate``."""

    def __init__(self, body: bytes = ANSWER) -> None:
        self.body = body
        self.runs: Counter[str] = Counter()
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
        with self._lock:
            self.runs[key] += 1
        if scope["path"] == "/slow":
            self.entered.release()
            await asyncio.to_thread(self.gate.wait, 30)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def post(conn: http.client.HTTPConnection, key: str, path: str = "/charges") -> tuple[int, bytes]:
    conn.request("POST", path, body=b'{"amount": 1000}', headers={"Idempotency-Key": key})
    response = conn.getresponse()
    return response.status, response.read()


def connect(base: str) -> http.client.HTTPConnection:
    host, port = base.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def drive(
    base: str, keys: list[str], clients: int, after: Callable[[], None] = lambda: None
) -> Counter[int]:
    """POST every key once from ``clients`` threads (keep-alive connections); ``after`` runs
    after each response. Returns how many responses had each status."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(mine: list[str]) -> None:
        try:
            conn = connect(base)
            for key in mine:
                status, _ = post(conn, key)
                after()
                with lock:
                    statuses[status] += 1
            conn.close()
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(keys[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    return statuses


def wal_size(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


class WalPeak:
    """The largest ``-wal`` size seen by any sampler (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.max = 0
        self._lock = threading.Lock()

    def sample(self) -> None:
        size = wal_size(self.path)
        with self._lock:
            self.max = max(self.max, size)


def rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


# -- #7: the WAL stays bounded ----------------------------------------------------------------


def test_the_wal_stays_bounded_under_concurrent_requests_and_empties_when_idle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal.db"
    store = SQLiteStore(path, clock=FakeClock(), wal_idle=0.2)
    shop = Shop()
    app = ASGIIdempotencyMiddleware(
        shop, store=store, policy=Policy(scope=shared_scope), telemetry=None
    )
    peak = WalPeak(path)
    keys = [f"wal-{i}" for i in range(1500)]  # main left a 50 MiB -wal after these
    try:
        with serve_asgi(app) as base:
            statuses = drive(base, keys, clients=20, after=peak.sample)
        assert statuses == {201: len(keys)}
        assert sum(shop.runs.values()) == len(keys)
        assert peak.max <= WAL_BOUND, f"the -wal file reached {peak.max / MiB:.1f} MiB"
        # The server is stopped, the store still open: once writes stop, the store empties
        # the file by itself (a checkpoint that only succeeds when no connection holds a
        # read snapshot open). A counted poll: it happens 0.2 s after the last write.
        for _ in range(600):
            if wal_size(path) == 0:
                break
            time.sleep(0.05)
        assert wal_size(path) == 0
        assert rows(path) == len(keys)  # nothing lost on the way
    finally:
        store.close()


# -- #8: the purge keeps pace with the writes ---------------------------------------------------


def test_expired_records_are_purged_as_fast_as_requests_write_them(tmp_path: Path) -> None:
    path = tmp_path / "purge.db"
    clock = FakeClock()
    # The default store: its timed purge (once a minute of wall clock) never comes due here.
    store = SQLiteStore(path, clock=clock)
    policy = Policy(scope=shared_scope, ttl=10, retention=10)  # seconds of the store's (fake) clock
    app = ASGIIdempotencyMiddleware(Shop(), store=store, policy=policy, telemetry=None)
    peak = WalPeak(path)
    per_round, counts = 150, []
    try:
        with serve_asgi(app) as base:
            for round in range(4):
                keys = [f"r{round}-{i}" for i in range(per_round)]
                assert drive(base, keys, clients=8, after=peak.sample) == {201: per_round}
                counts.append(rows(path))
                clock.advance(30)  # every record so far is past its TTL and its retention
    finally:
        store.close()
    # Each round's requests purged the rounds before them: the table holds about one round
    # (main kept every record: 150, 300, 450, 600).
    assert max(counts) <= 2 * per_round, counts
    assert peak.max <= WAL_BOUND


def write_rounds(
    path: str, start: float, name: str, rounds: int, per_round: int, sync: Any, peaks: Any
) -> None:
    """A child process: ``rounds`` of ``per_round`` keyed writes (two threads) on its own
    store and fake clock; between rounds it waits for the parent, then moves its clock on."""
    clock = FakeClock(start)
    store = SQLiteStore(path, clock=clock)
    body = StoredResponse(201, (("content-type", "application/json"),), ANSWER)
    peak = 0

    def write(keys: Iterable[str]) -> None:
        nonlocal peak
        for key in keys:
            claimed = store.claim(key, "fp", 30.0)
            assert isinstance(claimed, Claimed)
            assert store.complete(key, claimed.token, body, 10.0, 10.0)
            peak = max(peak, wal_size(Path(path)))

    for round in range(rounds):
        keys = [f"{name}-{round}-{i}" for i in range(per_round)]
        threads = [threading.Thread(target=write, args=(keys[t::2],)) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sync.wait()  # round done: the parent counts the rows
        sync.wait()
        clock.advance(30)
    store.close()
    peaks.put(peak)


def test_several_processes_on_one_file_keep_the_wal_and_the_table_bounded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()  # the schema, before the writers race to make it
    ctx = multiprocessing.get_context("spawn")
    processes, rounds, per_round = 3, 3, 250
    sync = ctx.Barrier(processes + 1, timeout=120)
    peaks = ctx.Queue()
    start = FakeClock()()
    children = [
        ctx.Process(
            target=write_rounds,
            args=(str(path), start, f"p{p}", rounds, per_round, sync, peaks),
        )
        for p in range(processes)
    ]
    for child in children:
        child.start()
    counts = []
    try:
        for _ in range(rounds):
            sync.wait()
            counts.append(rows(path))
            sync.wait()
        highest = max(peaks.get(timeout=120) for _ in children)
    finally:
        for child in children:
            child.join(60)
            if child.is_alive():  # pragma: no cover - only after a failure above
                child.kill()
    assert [child.exitcode for child in children] == [0] * processes
    assert highest <= WAL_BOUND, f"the -wal file reached {highest / MiB:.1f} MiB"
    # About one round of every process, not every round (main: 750, 1500, 2250).
    assert max(counts) <= 2 * processes * per_round, counts


# -- #12: the memory store is bounded -----------------------------------------------------------


def problem(body: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body)
    doc["name"] = doc["type"].rsplit(":", 1)[-1]
    return doc


def test_a_memory_store_full_of_requests_in_flight_answers_503_and_evicts_none(
    tmp_path: Path,
) -> None:
    store = MemoryStore(max_records=4)
    shop = Shop()
    app = ASGIIdempotencyMiddleware(
        shop, store=store, policy=Policy(scope=shared_scope, wait=0), telemetry=None
    )
    with serve_asgi(app) as base:
        slow: list[tuple[int, bytes]] = []
        holders = [
            threading.Thread(target=lambda k=k: slow.append(post(connect(base), k, "/slow")))
            for k in ("s0", "s1", "s2", "s3")
        ]
        for holder in holders:
            holder.start()
        for _ in holders:
            assert shop.entered.acquire(timeout=30)  # all four claimed and running
        conn = connect(base)
        status, body = post(conn, "new")
        assert status == 503
        doc = problem(body)
        assert doc["name"] == "store-unavailable"
        assert "memory store is full" in doc["detail"]
        assert "new" not in shop.runs  # refused before the handler
        # The requests in flight are all still there: a retry is told to wait, not run again.
        status, body = post(conn, "s0", "/slow")
        assert (status, problem(body)["name"]) == (409, "request-in-flight")
        assert len(store) == 4
        shop.gate.set()
        for holder in holders:
            holder.join(30)
        assert sorted(s for s, _ in slow) == [201] * 4
        # Finished records make room: the refused key goes through on its retry.
        assert post(conn, "new")[0] == 201
        assert len(store) == 4
    assert shop.runs == {"s0": 1, "s1": 1, "s2": 1, "s3": 1, "new": 1}


def test_the_wsgi_middleware_says_the_memory_store_is_full_too() -> None:
    store = MemoryStore(max_records=1)
    gate, entered = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            gate.wait(30)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [ANSWER]

    wsgi = WSGIIdempotencyMiddleware(
        app, store=store, policy=Policy(scope=shared_scope, wait=0), telemetry=None
    )
    with serve_wsgi(wsgi) as base:
        slow: list[int] = []
        holder = threading.Thread(target=lambda: slow.append(post(connect(base), "s", "/slow")[0]))
        holder.start()
        assert entered.wait(30)
        status, body = post(connect(base), "other")
        assert status == 503
        assert "memory store is full" in problem(body)["detail"]
        gate.set()
        holder.join(30)
        assert slow == [201]
        assert post(connect(base), "other")[0] == 201


def test_under_pressure_only_finished_records_are_evicted(tmp_path: Path) -> None:
    store = MemoryStore(max_records=40)
    shop = Shop()
    app = ASGIIdempotencyMiddleware(
        shop, store=store, policy=Policy(scope=shared_scope, wait=0), telemetry=None
    )
    sizes: list[int] = []
    lock = threading.Lock()

    def sample() -> None:
        with lock:
            sizes.append(len(store))

    with serve_asgi(app) as base:
        slow: list[int] = []
        held = [f"held-{i}" for i in range(5)]
        holders = [
            threading.Thread(target=lambda k=k: slow.append(post(connect(base), k, "/slow")[0]))
            for k in held
        ]
        for holder in holders:
            holder.start()
        for _ in holders:
            assert shop.entered.acquire(timeout=30)
        keys = [f"fast-{i}" for i in range(400)]  # ten times the bound
        assert drive(base, keys, clients=10, after=sample) == {201: len(keys)}
        # Every request in flight kept its record through the churn: a duplicate is refused.
        conn = connect(base)
        for key in held:
            status, _ = post(conn, key, "/slow")
            assert status == 409
        shop.gate.set()
        for holder in holders:
            holder.join(30)
        assert slow == [201] * len(held)
        for key in held:  # and each finished once: now a replay
            assert post(conn, key, "/slow") == (201, ANSWER)
    assert max(sizes) <= 40
    assert all(shop.runs[key] == 1 for key in held + keys)


def test_concurrent_threads_never_evict_a_claim_in_flight() -> None:
    store = MemoryStore(max_records=64, max_bytes=64 * 1024)
    refused = Counter[str]()
    broken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        held: list[tuple[str, int]] = []
        for i in range(600):
            key = f"{name}-{i}"
            try:
                claimed = store.claim(key, "fp", 60.0)
            except StoreUnavailable:  # StoreFull: every record is in flight
                with lock:
                    refused[name] += 1
                claimed = None
            if isinstance(claimed, Claimed):
                if i % 50 == 0 and len(held) < 4:
                    held.append((key, claimed.token))  # stays in flight for a while
                else:
                    body = StoredResponse(200, (), b"x" * (i % 7 * 400))
                    if not store.complete(key, claimed.token, body, 60.0, 60.0):
                        broken.append(key)
            if len(store) > 64 or store.bytes_used > 64 * 1024:
                broken.append(f"over the bound at {key}")
            for key_held, _ in held:
                record = store.get(key_held)
                if record is None or record.state is not State.IN_FLIGHT:
                    broken.append(f"{key_held} evicted in flight")
        for key_held, token in held:
            if not store.complete(key_held, token, StoredResponse(201, (), b"ok"), 60.0, 60.0):
                broken.append(key_held)

    threads = [threading.Thread(target=worker, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert broken == []
    assert len(store) <= 64
    assert store.bytes_used <= 64 * 1024


def test_a_body_that_cannot_fit_is_kept_unreplayable_never_run_twice(tmp_path: Path) -> None:
    store = MemoryStore(max_bytes=16 * 1024)
    shop = Shop(body=b"x" * 40_000)  # under the cache cap (1 MiB), over the store's bound
    app = ASGIIdempotencyMiddleware(
        shop, store=store, policy=Policy(scope=shared_scope), telemetry=None
    )
    with serve_asgi(app) as base:
        conn = connect(base)
        assert post(conn, "big") == (201, shop.body)
        status, body = post(conn, "big")
        assert (status, problem(body)["name"]) == (409, "unreplayable")
    assert shop.runs["big"] == 1
    assert store.bytes_used <= 16 * 1024


def test_expired_records_are_evicted_before_live_ones() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_records=2)
    body = StoredResponse(201, (), b"kept")
    for key, ttl in (("live", 1000.0), ("short", 1.0)):  # the expired one is the newer
        claimed = store.claim(key, "fp", 60.0)
        assert isinstance(claimed, Claimed)
        assert store.complete(key, claimed.token, body, ttl, 60.0)
    clock.advance(5)
    assert isinstance(store.claim("third", "fp", 60.0), Claimed)
    replay = store.claim("live", "fp", 60.0)
    assert isinstance(replay, Existing)
    assert replay.record.response == body
    assert store.get("short") is None


def test_the_memory_url_sets_the_bound_and_rejects_what_it_does_not_know() -> None:
    store = open_store("memory://?max_records=10&max_bytes=65536")
    assert isinstance(store, MemoryStore)
    assert (store.max_records, store.max_bytes) == (10, 65536)
    defaults = open_store("memory://")
    assert isinstance(defaults, MemoryStore)
    assert (defaults.max_records, defaults.max_bytes) == (100_000, 128 * MiB)
    for url, says in (
        ("memory://?max_records=ten", "max_records"),
        ("memory://?max_records=0", "max_records"),
        ("memory://?max_bytes=-1", "max_bytes"),
        ("memory://?max_record=10", "max_record"),
    ):
        with pytest.raises(ConfigurationError, match=says):
            open_store(url)

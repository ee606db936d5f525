"""Replay claims (SPEC 25): replayers sharing one queue send each parked entry once.

A replay claims its entry with one atomic store operation (``UPDATE ... WHERE state =
'parked'``, a Lua script on Redis) before sending it. Without the claim, two replayers that
listed the queue at the same time would both send every entry. Exercised with threads, asyncio
tasks and OS processes, each replayer with its own ``DeadLetterQueue`` on the same queue, on
every backend (SQLite, Redis, PostgreSQL); plus the claim's lease (a dead replayer's entries
come back when it lapses) and fencing (a replayer whose lease lapsed cannot overwrite the
result).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from kit.children import child_argv, child_env
from kit.client_servers import FaultServer
from kit.dlq import DLQUrl
from retrysafe.client.dlq import DeadLetterQueue, EntryState

ENTRIES = 40


def park(queue: DeadLetterQueue, n: int, url: str = "http://api.test/charges") -> set[str]:
    """``n`` due entries, each with its own key; their ids."""
    ids = set()
    for i in range(n):
        key = f"key-{i:03d}"
        request = httpx.Request(
            "POST", url, content=b'{"n": %d}' % i, headers={"Idempotency-Key": key}
        )
        ids.add(
            queue.park(
                request,
                key=key,
                reason="exhausted",
                attempts=(),
                last_error="HTTP 503",
                not_before=0.0,
            )
        )
    return ids


class Counting:
    """A MockTransport handler: counts sends per key (thread-safe), answers ``status``."""

    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.per_key: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.per_key[request.headers["idempotency-key"]] += 1
        return httpx.Response(self.status)


def queues(url: str | Path, n: int = 2, **kw: object) -> list[DeadLetterQueue]:
    return [DeadLetterQueue(url, rate=1e9, **kw) for _ in range(n)]  # type: ignore[arg-type]


def assert_each_sent_once(
    per_key: Counter[str], results: list[list[str]], ids: set[str], queue: DeadLetterQueue
) -> None:
    assert sorted(per_key) == [f"key-{i:03d}" for i in range(ENTRIES)]
    assert set(per_key.values()) == {1}, per_key.most_common(3)
    mine, theirs = (set(r) for r in results)
    assert not mine & theirs  # no entry was replayed by both
    assert mine | theirs == ids
    assert {e.state for e in queue.entries()} == {EntryState.DONE}
    assert queue.depth() == 0


def test_two_threads_replaying_at_once_send_each_entry_once(dlq_url: DLQUrl) -> None:
    a, b = queues(dlq_url.url)
    ids = park(a, ENTRIES)
    net = Counting()
    start = threading.Barrier(2)
    results: list[list[str]] = [[], []]

    def replayer(i: int, queue: DeadLetterQueue) -> None:
        with httpx.Client(transport=httpx.MockTransport(net)) as client:
            start.wait()
            results[i] = [r.id for r in queue.replay(client)]

    threads = [threading.Thread(target=replayer, args=(i, q)) for i, q in enumerate((a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert_each_sent_once(net.per_key, results, ids, a)
    for queue in (a, b):
        queue.close()


async def test_two_tasks_replaying_at_once_send_each_entry_once(dlq_url: DLQUrl) -> None:
    a, b = queues(dlq_url.url)
    ids = park(a, ENTRIES)
    per_key: Counter[str] = Counter()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the other replayer run between claim and answer
        per_key[request.headers["idempotency-key"]] += 1
        return httpx.Response(201)

    async def replayer(queue: DeadLetterQueue) -> list[str]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [r.id for r in await queue.areplay(client)]

    results = await asyncio.gather(replayer(a), replayer(b))
    assert_each_sent_once(per_key, list(results), ids, a)
    for queue in (a, b):
        queue.close()


def test_two_processes_replaying_at_once_send_each_entry_once(dlq_url: DLQUrl) -> None:
    server = FaultServer("ok")
    path = dlq_url.url
    (queue,) = queues(path, 1)
    ids = park(queue, ENTRIES, f"{server.url}/charges")
    children = [
        subprocess.Popen(
            child_argv("dlq_replay_child", path),
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # both are ready: start them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        server.close()
    assert all(child.returncode == 0 for child in children)
    per_key = Counter(_key_of(raw) for raw in server.requests)
    assert_each_sent_once(per_key, [json.loads(out) for out in outputs], ids, queue)
    queue.close()


def _key_of(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"idempotency-key":
            return value.strip().decode()
    raise AssertionError(f"no key in {raw!r}")


class Clock:
    """Wall-clock time plus a settable offset: claims are stamped with the queue's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_dead_replayers_claim_lapses_then_the_entry_is_replayed(dlq_url: DLQUrl) -> None:
    """A replayer killed (SIGKILL) mid-send leaves its claim; others wait out the lease."""
    server = FaultServer("hang", "ok")
    path = dlq_url.url
    clock = Clock()
    (queue,) = queues(path, 1, clock=clock, claim_lease=300.0)
    (entry_id,) = park(queue, 1, f"{server.url}/charges")
    child = subprocess.Popen(
        child_argv("dlq_replay_child", path),
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        _wait_for(lambda: len(server.requests) == 1)  # the child's send reached the server
        child.kill()
        child.wait(timeout=10)
        entry = queue.get(entry_id)
        assert entry is not None
        assert entry.state is EntryState.REPLAYING
        assert queue.depth() == 1

        with httpx.Client(timeout=10.0) as client:
            assert queue.replay(client, force=True) == []  # the lease is live: not sent
            assert len(server.requests) == 1
            clock.offset = 301.0
            [result] = queue.replay(client)
        assert result.state is EntryState.DONE
        assert len(server.requests) == 2
    finally:
        if child.poll() is None:
            child.kill()
        server.close()
        queue.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        threading.Event().wait(0.01)


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt: escapes the replay loop."""


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_an_interrupted_replay_hands_its_claim_back(dlq_url: DLQUrl, flavor: str) -> None:
    (queue,) = queues(dlq_url.url, 1)
    (entry_id,) = park(queue, 1)
    before = queue.get(entry_id)

    def interrupt(request: httpx.Request) -> httpx.Response:
        raise Interrupted

    def replay_sync() -> None:
        with httpx.Client(transport=httpx.MockTransport(interrupt)) as client:
            queue.replay(client)

    async def replay_async() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(interrupt)) as client:
            await queue.areplay(client)

    with pytest.raises(Interrupted):
        replay_sync() if flavor == "sync" else asyncio.run(replay_async())
    after = queue.get(entry_id)
    assert after is not None
    assert before is not None
    assert after.state is EntryState.PARKED
    assert after.not_before == before.not_before  # as it was: due again at once
    net = Counting()
    with httpx.Client(transport=httpx.MockTransport(net)) as client:
        [result] = queue.replay(client)
    assert result.state is EntryState.DONE
    assert net.per_key == {"key-000": 1}
    queue.close()


def test_a_replayer_whose_lease_lapsed_cannot_overwrite_the_result(dlq_url: DLQUrl) -> None:
    """A's send outlives its lease; B takes the entry over and settles it first (fencing)."""
    clock = Clock()
    a, b = queues(dlq_url.url, clock=clock, claim_lease=60.0)
    (entry_id,) = park(a, 1)
    taken_over: list[str] = []

    def slow_then_503(request: httpx.Request) -> httpx.Response:
        clock.offset += 61.0  # A's lease lapses while its request is out
        with httpx.Client(transport=httpx.MockTransport(Counting(201))) as other:
            taken_over.extend(r.id for r in b.replay(other))
        return httpx.Response(503)

    with httpx.Client(transport=httpx.MockTransport(slow_then_503)) as client:
        [late] = a.replay(client)
    assert taken_over == [entry_id]
    assert late.state is EntryState.PARKED  # what A saw ...
    entry = a.get(entry_id)
    assert entry is not None
    assert entry.state is EntryState.DONE  # ... is not what A wrote: B's result stands
    assert entry.replays == 1
    assert entry.last_status == 201
    for queue in (a, b):
        queue.close()


def test_a_file_made_before_claims_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from retrysafe.client.dlq._sqlite import SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace(",\n    claim       TEXT", ""))
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(retrysafe_dlq)")}
    assert "claim" not in columns
    (queue,) = queues(path, 1)
    park(queue, 1)
    net = Counting()
    with httpx.Client(transport=httpx.MockTransport(net)) as client:
        [result] = queue.replay(client)
    assert result.state is EntryState.DONE
    queue.close()


def test_the_cli_shows_a_claimed_entry_and_leaves_it_to_its_replayer(dlq_url: DLQUrl) -> None:
    from click.testing import CliRunner

    from retrysafe.cli._commands import cli

    store = dlq_url.url
    (queue,) = queues(dlq_url.url, 1)
    (entry_id,) = park(queue, 1)
    outputs: list[str] = []

    def meanwhile(request: httpx.Request) -> httpx.Response:
        """While this replay holds the entry, another replayer (the CLI) looks at it."""
        runner = CliRunner(env={"COLUMNS": "250"})  # rich wraps to the terminal's width
        listed = runner.invoke(cli, ["dlq", "list", "--store", store])
        replayed = runner.invoke(cli, ["dlq", "replay", entry_id[:8], "--store", store])
        outputs.extend([listed.output, replayed.output])
        assert listed.exit_code == 0, listed.output
        assert replayed.exit_code == 0, replayed.output
        return httpx.Response(201)

    with httpx.Client(transport=httpx.MockTransport(meanwhile)) as client:
        [result] = queue.replay(client)
    assert result.state is EntryState.DONE
    listed, replayed = outputs
    assert "replaying" in listed
    assert "claimed for" in listed
    assert "is being replayed by another replayer" in replayed
    queue.close()

"""A DLQ replay is never sent in a scope other than the original's (hardening issue, defect 11).

The queue strips credential headers before storing an entry (rightly), but a replay through a
client that lacks them used to reach the server in another scope — the anonymous one — where
the key is new: the operation ran a second time, and the entry was marked ``done``. Here a
real server (uvicorn on loopback, the ASGI middleware scoping keys by the header) counts
executions, and the entry is parked after the server really ran it (the answer is lost on the
way back).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.servers import serve_asgi
from kit.stores import POSTGRES_URL, require_service, server_down
from retrysafe._policy import Policy
from retrysafe._scopes import authorization_scope, header_scope
from retrysafe.client import IdempotentTransport, RetriesExhausted, RetryPolicy
from retrysafe.client.dlq import DeadLetterQueue, EntryState
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

TOKEN = "Bearer alice-token"


class Ledger:
    """An app that records one charge per execution (the side effect that must not repeat)."""

    def __init__(self) -> None:
        self.executions = 0
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        with self.lock:
            self.executions += 1
            n = self.executions
        body = f'{{"charge": {n}}}'.encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class LostAnswer(httpx.BaseTransport):
    """The request reaches the real server and runs; the answer is lost on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        response.close()
        raise httpx.ReadError("connection reset after the request was processed", request=request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(
    params=[
        ("authorization", authorization_scope),
        ("cookie", header_scope("cookie")),
        ("x-api-key", header_scope("x-api-key")),
    ],
    ids=["authorization", "cookie", "x-api-key"],
)
def scoped(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Ledger]]:
    """(base URL, credential header the server scopes by, the app's ledger)."""
    header, scope = request.param
    ledger = Ledger()
    app = ASGIIdempotencyMiddleware(ledger, store=MemoryStore(), policy=Policy(scope=scope))
    with serve_asgi(app) as base:
        yield base, header, ledger


def park_one(base: str, queue: DeadLetterQueue, header: str) -> str:
    """A charge that ran on the server but whose answer was lost: parked with its key."""
    value = TOKEN if header == "authorization" else "session=alice"
    transport = IdempotentTransport(LostAnswer(), retry=RetryPolicy(attempts=1), dlq=queue)
    client = httpx.Client(transport=transport, headers={header: value})
    with client, pytest.raises(RetriesExhausted) as caught:
        client.post(base + "/charges", json={"cents": 500})
    assert caught.value.parked is not None
    return caught.value.parked


def credential(header: str) -> str:
    return TOKEN if header == "authorization" else "session=alice"


def test_replay_without_the_credential_is_refused_and_with_it_gets_the_stored_answer(
    tmp_path: Path, scoped: tuple[str, str, Ledger]
) -> None:
    base, header, ledger = scoped
    queue = DeadLetterQueue(tmp_path / "dlq.db")
    entry_id = park_one(base, queue, header)
    assert ledger.executions == 1
    parked = queue.get(entry_id)
    assert parked is not None
    assert parked.redacted == (header,)

    # A replayer that forgot the credential: nothing is sent, the entry stays as it was.
    with httpx.Client(transport=IdempotentTransport()) as bare:
        (refused,) = queue.replay(bare, [entry_id], force=True)
    assert refused.state is EntryState.PARKED
    assert refused.missing == (header,)
    assert header in refused.detail.lower()
    after = queue.get(entry_id)
    assert after is not None
    assert after.state is EntryState.PARKED
    assert after.replays == 0  # not counted as a replay: nothing went out
    assert ledger.executions == 1

    # With the credential: the same scope, the same key -> the stored answer, no second run.
    with httpx.Client(
        transport=IdempotentTransport(), headers={header: credential(header)}
    ) as client:
        (done,) = queue.replay(client, [entry_id], force=True)
    assert done.state is EntryState.DONE
    assert done.status == 201
    assert done.replayed  # Idempotent-Replayed: true - the server answered from its store
    assert ledger.executions == 1
    queue.close()


async def test_async_replay_is_refused_too(tmp_path: Path, scoped: tuple[str, str, Ledger]) -> None:
    base, header, ledger = scoped
    queue = DeadLetterQueue(tmp_path / "dlq.db")
    entry_id = park_one(base, queue, header)
    async with httpx.AsyncClient() as bare:
        (refused,) = await queue.areplay(bare, [entry_id], force=True)
    assert refused.missing == (header,)
    assert ledger.executions == 1
    async with httpx.AsyncClient(headers={header: credential(header)}) as client:
        (done,) = await queue.areplay(client, [entry_id], force=True)
    assert done.state is EntryState.DONE
    assert done.replayed
    assert ledger.executions == 1
    queue.close()


def test_client_auth_supplies_the_credential(tmp_path: Path) -> None:
    """``client.auth`` adds Authorization during the send: that counts as having it."""
    ledger = Ledger()
    app = ASGIIdempotencyMiddleware(ledger, store=MemoryStore())
    with serve_asgi(app) as base:
        queue = DeadLetterQueue(tmp_path / "dlq.db")
        basic = httpx.BasicAuth("alice", "secret")
        transport = IdempotentTransport(LostAnswer(), retry=RetryPolicy(attempts=1), dlq=queue)
        client = httpx.Client(transport=transport, auth=basic)
        with client, pytest.raises(RetriesExhausted) as caught:
            client.post(base + "/charges", json={"cents": 500})
        entry_id = caught.value.parked
        assert entry_id is not None
        with httpx.Client(transport=IdempotentTransport(), auth=basic) as replayer:
            (done,) = queue.replay(replayer, [entry_id], force=True)
        assert done.state is EntryState.DONE
        assert done.replayed
        assert ledger.executions == 1
        queue.close()


def test_redact_cannot_drop_the_credential_headers(tmp_path: Path) -> None:
    """``redact=`` adds names; Authorization, Proxy-Authorization and Cookie are always kept out."""
    queue = DeadLetterQueue(tmp_path / "dlq.db", redact={"X-Tenant-Secret"})
    request = httpx.Request(
        "POST",
        "http://127.0.0.1:1/x",
        headers={"Authorization": TOKEN, "Cookie": "s=1", "X-Tenant-Secret": "t"},
        content=b"{}",
    )
    entry_id = queue.park(
        request, key="k" * 32, reason="exhausted", attempts=(), last_error="", not_before=0
    )
    entry = queue.get(entry_id)
    assert entry is not None
    assert entry.redacted == ("authorization", "cookie", "x-tenant-secret")
    assert all(name.lower() not in entry.redacted for name, _ in entry.headers)
    queue.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "retrysafe.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cli_replay_names_the_header_and_replays_with_it(tmp_path: Path) -> None:
    ledger = Ledger()
    app = ASGIIdempotencyMiddleware(ledger, store=MemoryStore())
    with serve_asgi(app) as base:
        store = f"sqlite:///{tmp_path / 'dlq.db'}"
        queue = DeadLetterQueue(store)
        entry_id = park_one(base, queue, "authorization")
        queue.close()
        assert ledger.executions == 1

        refused = run_cli("dlq", "replay", entry_id[:8], "--store", store)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "-H 'Authorization: ...'" in refused.stderr
        assert ledger.executions == 1
        queue = DeadLetterQueue(store)
        still = queue.get(entry_id)
        assert still is not None
        assert still.state is EntryState.PARKED
        queue.close()

        replayed = run_cli(
            "dlq", "replay", entry_id[:8], "--store", store, "-H", f"Authorization: {TOKEN}"
        )
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "(replay)" in replayed.stdout  # the stored answer, not a new execution
        assert ledger.executions == 1
        queue = DeadLetterQueue(store)
        done = queue.get(entry_id)
        assert done is not None
        assert done.state is EntryState.DONE
        queue.close()


def test_cli_never_prints_the_store_password() -> None:
    """``dlq list`` titled its table with ``--store`` verbatim: a PostgreSQL password went to
    the terminal (and to CI logs). Trust auth ignores the password, so any will do."""
    if why := server_down(POSTGRES_URL):
        require_service("PostgreSQL", why)
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    prefix = f"t{uuid.uuid4().hex[:12]}_"
    parts = urlsplit(POSTGRES_URL)
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0] or 'postgres'}:hunter2-secret@{host}"
    sep = "&" if parts.query else ""
    query = f"{parts.query}{sep}table_prefix={prefix}"
    store = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    try:
        listed = run_cli("dlq", "list", "--store", store)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "hunter2-secret" not in listed.stdout + listed.stderr
        assert "0 entries in postgresql://" in listed.stdout
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{prefix}dlq"')

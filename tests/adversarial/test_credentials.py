"""Nothing written down lets anyone test a guessed credential (issue 19, item 1).

The audit log and the store ids used to carry ``sha256(Authorization)`` unsalted: from the
audit file alone a six-word dictionary recovered ``alice:hunter2``. Principal ids are now an
HMAC under a per-deployment secret (``$RETRYSAFE_SECRET``, else one kept in the store), so a
dictionary of the credential and its obvious variants, hashed every obvious way, finds nothing
in the audit log, the spans and metrics, the store's rows or the dead-letter queue, while the
deployment itself (and ``retrysafe keys``) still files and finds every key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kit.servers import serve_asgi, serve_wsgi
from kit.stores import StoreKit
from kit.telemetry import audit_to
from retrysafe._keyring import SECRET_ENV, stored_secret
from retrysafe._policy import Policy
from retrysafe._scopes import PrincipalKey
from retrysafe.cli._commands import cli
from retrysafe.client import IdempotentTransport, RetryPolicy
from retrysafe.client._errors import RetriesExhausted
from retrysafe.client.dlq import DeadLetterQueue
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.telemetry import Telemetry

USER, PASSWORD = "alice", "hunter2"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
DICTIONARY = ["password", "123456", "letmein", "qwerty", "hunter2", "dragon"]
KEYS = ["8e03978e-40d5-43e8-bc93-6894a57f9324", "0b6c4c1e-5a6f-4a3e-9d55-3f0c3e1f6a21"]
ENV_SECRET = "an-operator-chosen-secret-of-40-characters"


def variants() -> set[str]:
    """What an attacker tries: each word as a password, user:password, base64, the header."""
    out: set[str] = set()
    for word in DICTIONARY:
        for user in (USER, "admin"):
            pair = f"{user}:{word}"
            b64 = base64.b64encode(pair.encode()).decode()
            out.update({word, pair, b64, f"Basic {b64}", f"basic {b64}", f"Bearer {word}"})
    return out


def guesses(keys: list[str]) -> set[str]:
    """Every variant, as is and hashed every obvious way (with the framings retrysafe used),
    and the store id each hash gives with each key an attacker could read in the audit log."""
    out = set(variants())
    for text in variants():
        for framed in (text, f"authorization\0{text}", f"header:authorization\0{text}"):
            data = framed.encode()
            for algorithm in ("sha256", "sha1", "md5", "sha512", "blake2b"):
                digest = hashlib.new(algorithm, data).digest()
                out.update({digest.hex(), base64.b64encode(digest).decode()})
            sha = hashlib.sha256(data).hexdigest()
            for key in keys:
                out.add(hashlib.sha256(f"{sha}\0{key}".encode()).hexdigest())
    return out


def found(haystack: str, keys: list[str]) -> list[str]:
    return sorted(g for g in guesses(keys) if g in haystack)


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self) -> Telemetry:
        # Raw key mode: the keys are in the audit log, the attacker's best case.
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def dump(self) -> str:
        """Every span (name, attributes, events, links) and metric point, as text."""
        spans = [span.to_json() for span in self.exporter.get_finished_spans()]
        metrics = self.reader.get_metrics_data()
        return "\n".join(spans) + (metrics.to_json() if metrics is not None else "")

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = Otel()
    yield made
    made.close()


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[Path]:
    """The audit log routed to a file, as docs/observability.md shows."""
    path = tmp_path / "audit.log"
    with audit_to(logging.FileHandler(path)):
        yield path


@pytest.fixture(autouse=True)
def no_secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def charge_app(executions: list[str]) -> Callable[..., Any]:
    """ASGI: charges, answering 201; ``/busy`` always 503 (so the client dead-letters)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        busy = scope["path"] == "/busy"
        if not busy:
            executions.append(scope["path"])
        body = b'{"charged":true}'
        status = 503 if busy else 201
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_charge_app(executions: list[str]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        busy = environ["PATH_INFO"] == "/busy"
        if not busy:
            executions.append(environ["PATH_INFO"])
        start_response("503 Busy" if busy else "201 Created", [("Content-Type", "text/plain")])
        return [b'{"charged":true}']

    return app


def served(kind: str, store: SQLiteStore, otel: Otel, executions: list[str]) -> Any:
    if kind == "asgi":
        app = ASGIIdempotencyMiddleware(
            charge_app(executions), store=store, policy=Policy(), telemetry=otel.telemetry()
        )
        return serve_asgi(app)
    app = WSGIIdempotencyMiddleware(
        wsgi_charge_app(executions), store=store, policy=Policy(), telemetry=otel.telemetry()
    )
    return serve_wsgi(app)


def dead_letter(url: str, queue: DeadLetterQueue) -> None:
    """A client call that fails until it is parked in the dead-letter queue."""
    transport = IdempotentTransport(
        retry=RetryPolicy(attempts=2, base=0.0, cap=0.0), dlq=queue, budget=False
    )
    with (
        httpx.Client(transport=transport, headers={"Authorization": BASIC}) as client,
        pytest.raises(RetriesExhausted) as parked,
    ):
        client.post(f"{url}/busy", json={"amount": 1})
    assert parked.value.parked is not None


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_dictionary_finds_nothing_in_what_is_written(
    kind: str, tmp_path: Path, otel: Otel, audit_file: Path
) -> None:
    db = tmp_path / "store.db"
    store = SQLiteStore(db)
    queue = DeadLetterQueue(f"sqlite:///{tmp_path / 'dlq.db'}", rate=1000.0)
    executions: list[str] = []
    try:
        with served(kind, store, otel, executions) as url:
            replies = [
                httpx.post(
                    f"{url}/charges",
                    json={"amount": 10},
                    headers={"Authorization": BASIC, "Idempotency-Key": key},
                    timeout=30.0,
                )
                for key in (*KEYS, KEYS[0])
            ]
            dead_letter(url, queue)
    finally:
        queue.close()
        store.close()

    assert [r.status_code for r in replies] == [201, 201, 201]
    assert replies[2].headers["idempotent-replayed"] == "true"
    assert executions == ["/charges", "/charges"]
    audit = audit_file.read_text()
    lines = [json.loads(line) for line in audit.splitlines()]
    assert {line["key"] for line in lines} >= set(KEYS)  # the attacker has the keys

    # The dictionary would have found what the audit log used to hold ...
    assert found(hashlib.sha256(BASIC.encode()).hexdigest(), KEYS)
    # ... and finds nothing in anything written now.
    sqlite_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    dlq_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("dlq.db*"))
    assert found(audit, KEYS) == []
    assert found(otel.dump(), KEYS) == []
    assert found(sqlite_bytes.decode("latin-1"), KEYS) == []
    assert found(dlq_bytes.decode("latin-1"), KEYS) == []

    # The deployment itself still ties the scope to the credential: the secret it kept in the
    # store keys the principal id the audit log shows, and `retrysafe keys` finds the record.
    store = SQLiteStore(db)
    try:
        secret = stored_secret(store)
    finally:
        store.close()
    assert secret is not None
    principal_id = PrincipalKey(secret).id_of(f"header:authorization\0{BASIC}")
    assert {line["scope"] for line in lines} == {principal_id}
    url = f"sqlite:///{db}"
    shown = CliRunner().invoke(
        cli, ["keys", "show", KEYS[0], "--authorization", BASIC, "--store", url]
    )
    wrong = CliRunner().invoke(
        cli, ["keys", "show", KEYS[0], "--authorization", "Basic eA==", "--store", url]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["state"] == "completed"
    assert wrong.exit_code == 1


def test_the_secret_from_the_environment_keys_ids_and_is_never_stored(
    tmp_path: Path, otel: Otel, audit_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, ENV_SECRET)
    db = tmp_path / "store.db"
    store = SQLiteStore(db)
    executions: list[str] = []
    try:
        with served("asgi", store, otel, executions) as url:
            reply = httpx.post(
                f"{url}/charges",
                json={"amount": 10},
                headers={"Authorization": BASIC, "Idempotency-Key": KEYS[0]},
                timeout=30.0,
            )
        assert reply.status_code == 201
        assert stored_secret(store) is None
    finally:
        store.close()

    (line,) = [json.loads(text) for text in audit_file.read_text().splitlines()]
    assert line["scope"] == PrincipalKey(ENV_SECRET).id_of(f"header:authorization\0{BASIC}")
    assert ENV_SECRET not in audit_file.read_text() + otel.dump()
    url = f"sqlite:///{db}"
    runner = CliRunner(env={SECRET_ENV: ENV_SECRET})
    shown = runner.invoke(cli, ["keys", "show", KEYS[0], "--authorization", BASIC, "--store", url])
    assert shown.exit_code == 0, shown.output
    deleted = runner.invoke(
        cli, ["keys", "delete", KEYS[0], "--authorization", BASIC, "--store", url]
    )
    assert deleted.exit_code == 0, deleted.output


def test_a_secret_shorter_than_32_characters_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from retrysafe.errors import ConfigurationError
    from retrysafe.stores.memory import MemoryStore

    monkeypatch.setenv(SECRET_ENV, PASSWORD)
    with pytest.raises(ConfigurationError, match=f"{SECRET_ENV}: .* at least 32 characters"):
        ASGIIdempotencyMiddleware(charge_app([]), store=MemoryStore())


def test_processes_sharing_a_store_agree_on_the_stored_secret(kit: StoreKit) -> None:
    """Two servers on one store (two processes' handles), started without a secret, both
    first-time at once: they adopt one secret, so a retry landing on the other is a replay."""
    executions: list[str] = []
    one = ASGIIdempotencyMiddleware(charge_app(executions), store=kit.store, telemetry=None)
    two = ASGIIdempotencyMiddleware(charge_app(executions), store=kit.reopen(), telemetry=None)
    headers = {"Authorization": BASIC}

    async def first_requests(a: str, b: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30.0) as client:
            return list(
                await asyncio.gather(
                    client.post(f"{a}/x", json={}, headers={**headers, "Idempotency-Key": "a"}),
                    client.post(f"{b}/y", json={}, headers={**headers, "Idempotency-Key": "b"}),
                )
            )

    with serve_asgi(one) as a, serve_asgi(two) as b:
        firsts = asyncio.run(first_requests(a, b))
        retries = [
            httpx.post(f"{b}/x", json={}, headers={**headers, "Idempotency-Key": "a"}),
            httpx.post(f"{a}/y", json={}, headers={**headers, "Idempotency-Key": "b"}),
        ]

    assert [r.status_code for r in firsts] == [201, 201]
    assert [r.headers.get("idempotent-replayed") for r in retries] == ["true", "true"]
    assert sorted(executions) == ["/x", "/y"]
    assert stored_secret(kit.store) is not None

"""`retrysafe dlq list|show|replay|purge` on every DLQ backend, against a loopback server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kit.client_servers import serve_app
from kit.dlq import DLQUrl
from retrysafe.cli._commands import cli
from retrysafe.client import IdempotentTransport, RetriesExhausted, RetryPolicy
from retrysafe.client.dlq import DeadLetterQueue, EntryState


def park(url: str, dlq: DeadLetterQueue, n: int) -> list[str]:
    """Park ``n`` calls to ``url`` (the network says 503 to all of them)."""
    down = httpx.MockTransport(lambda request: httpx.Response(503))
    transport = IdempotentTransport(down, retry=RetryPolicy(attempts=1), dlq=dlq)
    ids = []
    with httpx.Client(transport=transport, headers={"Authorization": "Bearer old"}) as client:
        for i in range(n):
            with pytest.raises(RetriesExhausted) as caught:
                client.post(url, json={"i": i})
            ids.append(caught.value.parked or "")
    return ids


def test_list_show_replay_purge(dlq_url: DLQUrl) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append((headers.get("authorization"), headers.get("idempotency-key")))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    store = dlq_url.url
    runner = CliRunner()
    with serve_app(app) as base:
        queue = DeadLetterQueue(store)
        ids = park(base + "/charges", queue, 2)
        keys = [e.key for e in queue.entries()]
        queue.close()

        listed = runner.invoke(cli, ["dlq", "list", "--store", store])
        assert listed.exit_code == 0, listed.output
        assert "2 entries" in listed.output
        assert ids[0][:8] in listed.output

        shown = runner.invoke(cli, ["dlq", "show", ids[1][:8], "--store", store])
        assert shown.exit_code == 0, shown.output
        doc = json.loads(shown.output)
        assert doc["id"] == ids[1]
        assert doc["redacted_headers"] == ["authorization"]
        assert doc["body"] == '{"i":1}'

        bad = runner.invoke(cli, ["dlq", "replay", "--store", store])
        assert bad.exit_code == 2  # neither ids nor --all

        replayed = runner.invoke(
            cli,
            [
                "dlq",
                "replay",
                "--all",
                "--force",
                "--store",
                store,
                "-H",
                "Authorization: Bearer new",
            ],
        )
        assert replayed.exit_code == 0, replayed.output
    assert sorted(seen) == sorted(("Bearer new", key) for key in keys)
    queue = DeadLetterQueue(store)
    assert [e.state for e in queue.entries()] == [EntryState.DONE, EntryState.DONE]
    queue.close()
    purged = runner.invoke(cli, ["dlq", "purge", "--store", store])
    assert purged.output.strip() == "purged 2 entries"


def test_bad_store_url_is_a_one_line_error() -> None:
    result = CliRunner().invoke(cli, ["dlq", "list", "--store", "mysql://x"])
    assert result.exit_code == 2
    assert "supports sqlite://, redis://" in result.output


def test_an_unreachable_store_is_a_one_line_error() -> None:
    down = "redis://127.0.0.1:1/0?connect_timeout=0.5"  # port 1: nothing listens on loopback
    result = CliRunner().invoke(cli, ["dlq", "list", "--store", down])
    assert result.exit_code == 3
    assert "dead-letter queue redis://127.0.0.1:1/0" in result.output
    assert "Traceback" not in result.output

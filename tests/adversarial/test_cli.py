"""The ``retrysafe`` command with a person at the keyboard: user errors are one line with a
documented exit code (README, "Command line"), inspecting commands create nothing, and the
dead-letter commands say what they did and why not.

Exit codes: 1 the answer is no (nothing there), 2 what was asked cannot work, 3 a store or
server cannot be reached. Driven through click's CliRunner on the real command group (and one
subprocess run of the installed entry point), against real files, the shared Redis on
127.0.0.1:6379 and a real loopback HTTP server.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from kit.servers import serve_asgi
from kit.stores import REDIS_URL, require_service, server_down
from retrysafe.cli._commands import cli
from retrysafe.client import IdempotentTransport, RetriesExhausted, RetryPolicy
from retrysafe.client.dlq import DeadLetterQueue
from retrysafe.stores.sqlite import SQLiteStore


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_error_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- files: nothing created, the wrong kind refused ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["keys", "show", "k"], ["keys", "stats"], ["keys", "delete", "k"], ["dlq", "list"]],
    ids=lambda a: " ".join(a),
)
def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "nothing.db"
    result = run(*args, "--store", f"sqlite:///{path}")
    assert result.exit_code == 1
    assert "does not exist" in one_error_line(result)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no -wal, no -shm either


def test_a_text_file_is_not_a_store(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for args in (["keys", "stats"], ["dlq", "list"]):
        result = run(*args, "--store", f"sqlite:///{text}")
        assert result.exit_code == 2
        assert "is not a SQLite database" in one_error_line(result)
    assert text.read_text() == "hello\n"


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_the_dlq_database_is_not_an_idempotency_store_and_back(tmp_path: Path) -> None:
    dlq_file = tmp_path / "dlq.db"
    DeadLetterQueue(f"sqlite:///{dlq_file}").close()
    store_file = tmp_path / "store.db"
    SQLiteStore(store_file).close()
    dlq_tables, store_tables = _tables(dlq_file), _tables(store_file)

    shown = run("keys", "show", "k", "--store", f"sqlite:///{dlq_file}")
    assert shown.exit_code == 2
    assert "is a dead-letter queue, not an idempotency store" in one_error_line(shown)
    assert "retrysafe dlq" in shown.output

    listed = run("dlq", "list", "--store", f"sqlite:///{store_file}")
    assert listed.exit_code == 2
    assert "is an idempotency store, not a dead-letter queue" in one_error_line(listed)
    assert "retrysafe keys" in listed.output

    assert _tables(dlq_file) == dlq_tables  # nothing added to either
    assert _tables(store_file) == store_tables


def test_proxy_refuses_the_dlq_database_as_its_store(tmp_path: Path) -> None:
    dlq_file = tmp_path / "dlq.db"
    DeadLetterQueue(f"sqlite:///{dlq_file}").close()
    before = _tables(dlq_file)
    result = run("proxy", "--upstream", "http://127.0.0.1:9", "--store", f"sqlite:///{dlq_file}")
    assert result.exit_code == 2
    assert "is a dead-letter queue, not an idempotency store" in one_error_line(result)
    assert _tables(dlq_file) == before


# -- unreachable, misdirected ------------------------------------------------------------------


def test_an_unreachable_store_is_exit_3() -> None:
    result = run("keys", "stats", "--store", f"redis://127.0.0.1:{closed_port()}/0")
    assert result.exit_code == 3
    assert "Connect" in one_error_line(result)


def test_redis_cluster_url_on_a_plain_redis_says_what_to_use() -> None:
    if why := server_down(REDIS_URL):
        require_service("Redis", why)
    result = run("keys", "stats", "--store", "redis+cluster://127.0.0.1:6379")
    assert result.exit_code == 3
    line = one_error_line(result)
    assert "not a Redis Cluster node" in line
    assert "use redis://" in line


def test_proxy_upstream_without_a_scheme_suggests_http() -> None:
    # The installed entry point, as a person runs it.
    exe = Path(sys.executable).with_name("retrysafe")
    proc = subprocess.run(
        [str(exe), "proxy", "--upstream", "127.0.0.1:8000"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RETRYSAFE_STORE_URL": "memory://"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'http://127.0.0.1:8000'?" in proc.stderr


def test_demo_scenarios_says_the_store_is_unreachable_up_front() -> None:
    result = run("demo", "--scenarios", "--store", f"redis://127.0.0.1:{closed_port()}/0")
    assert result.exit_code == 3
    assert "the demo's store is unreachable" in one_error_line(result)
    assert "FAILED" not in result.output  # no scenario ran


# -- report --------------------------------------------------------------------------------


def _audit_log(path: Path) -> Path:
    now = 1_790_000_000.0
    lines = []
    for i in range(50):
        outcome = "store_error" if i % 9 == 0 else "executed"
        doc = {"ts": now - i, "operation": "POST /payments", "outcome": outcome}
        doc |= {"status": 201 if i % 10 else 500, "surface": "http", "billable": True}
        doc |= {"key": f"k{i}", "duration_s": 0.01 * (i % 7), "attempt": 1}
        lines.append(json.dumps(doc))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_html_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    log = _audit_log(tmp_path / "audit.log")
    result = run("report", "--log", str(log), "--html", str(tmp_path / "no" / "such" / "r.html"))
    assert result.exit_code == 2
    assert "does not exist" in one_error_line(result)


def test_report_is_readable_at_80_columns(tmp_path: Path) -> None:
    log = _audit_log(tmp_path / "audit.log")
    result = run("report", "--log", str(log), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output  # no header or cell cut short ("store_err…", "avai…")
    slo = result.output[result.output.index("SLO status") :]
    for whole in ("availability", "budget left", "key correctness", "99.900%"):
        assert whole in slo, slo


# -- dlq wording ---------------------------------------------------------------------------


async def _unavailable(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b"down"})


def _park(url: str, queue: DeadLetterQueue, n: int) -> list[str]:
    transport = IdempotentTransport(retry=RetryPolicy(attempts=1), dlq=queue)
    ids = []
    with httpx.Client(transport=transport) as client:
        for i in range(n):
            with pytest.raises(RetriesExhausted) as caught:
                client.post(url, json={"i": i})
            ids.append(caught.value.parked or "")
    return ids


@pytest.fixture
def parked(tmp_path: Path) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path / 'dlq.db'}"
    queue = DeadLetterQueue(url)
    try:
        with serve_asgi(_unavailable) as base:
            ids = _park(base + "/charges", queue, 1)
    finally:
        queue.close()
    return url, ids


def test_dlq_counts_say_entry_and_entries(parked: tuple[str, list[str]]) -> None:
    url, _ = parked
    one = run("dlq", "list", "--store", url)
    assert "1 entry in" in one.output
    assert "state" in one.output
    purged = run("dlq", "purge", "--store", url, "--state", "parked")
    assert purged.output.strip() == "purged 1 entry"


def test_dlq_show_times_carry_their_zone(parked: tuple[str, list[str]]) -> None:
    url, ids = parked
    doc = json.loads(run("dlq", "show", ids[0][:8], "--store", url).output)
    for field in ("created_at", "not_before", "replay_by"):
        assert doc[field].endswith("+00:00"), doc[field]


def test_a_replay_that_sends_nothing_says_why(parked: tuple[str, list[str]]) -> None:
    url, _ = parked
    run("dlq", "purge", "--store", url, "--state", "parked")
    result = run("dlq", "replay", "--all", "--store", url)
    assert result.exit_code == 0
    assert "nothing replayed: no entry is parked" in result.output
    assert "replayed 0" not in result.output


@pytest.mark.parametrize("prefix", ["", "  ", "zz", "*"])
def test_an_entry_id_of_the_wrong_form_is_refused(
    parked: tuple[str, list[str]], prefix: str
) -> None:
    url, _ = parked
    result = run("dlq", "show", prefix, "--store", url)
    assert result.exit_code == 2
    assert "is not an entry id" in one_error_line(result)


@pytest.mark.parametrize("raw", ["", "abc", "G" * 64, "A" * 64, "a" * 63])
def test_keys_id_must_be_a_store_id(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    result = run("keys", "show", "--id", raw, "--store", f"sqlite:///{path}")
    assert result.exit_code == 2
    assert "is not a store id" in one_error_line(result)

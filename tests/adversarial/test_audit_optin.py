"""The audit log is opt-in: it never spills into the application's own log.

Before: an application with ``logging.basicConfig(level=logging.INFO)`` printed one JSON audit
line per keyed request among its own log lines. Now the ``retrysafe.audit`` logger does not
propagate and builds no line until it has a handler of its own; the documented set-up (a
``FileHandler`` on that logger, docs/observability.md) still gives a file ``retrysafe report``
reads. Each case runs in a fresh interpreter (logging is process-wide) serving a real app on
loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from retrysafe.cli._commands import cli

TESTS = Path(__file__).resolve().parents[1]

SERVE = """
import logging, sys
sys.path.insert(0, {tests!r})
{setup}
import httpx
from retrysafe.stores.memory import MemoryStore
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.telemetry import Telemetry
from kit.servers import serve_asgi

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({{"type": "http.response.start", "status": 201, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})

mw = ASGIIdempotencyMiddleware(app, store=MemoryStore(), telemetry=Telemetry())
with serve_asgi(mw) as base:
    for key in ("k1", "k1", "k2"):
        sent = {{"Idempotency-Key": key, "Authorization": "Bearer audit"}}
        r = httpx.post(base + "/pay", headers=sent, timeout=30)
        assert r.status_code == 201, r.status_code
print("APP-DONE", flush=True)
"""


def run_app(setup: str, cwd: Path) -> str:
    code = SERVE.format(tests=str(TESTS), setup=textwrap.dedent(setup))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    assert "APP-DONE" in proc.stdout
    return proc.stdout + proc.stderr


def audit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if '"outcome"' in line]


def test_basic_config_at_info_shows_no_audit_lines(tmp_path: Path) -> None:
    out = run_app("logging.basicConfig(level=logging.INFO, stream=sys.stdout)", tmp_path)
    assert audit_lines(out) == [], out


def test_the_documented_set_up_feeds_retrysafe_report(tmp_path: Path) -> None:
    setup = """
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    audit = logging.getLogger("retrysafe.audit")
    audit.addHandler(logging.FileHandler("audit.log"))
    """
    out = run_app(setup, tmp_path)
    assert audit_lines(out) == [], out  # in the file, not in the application's log
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in lines] == ["executed", "replayed", "executed"]
    report = CliRunner().invoke(cli, ["report", "--log", str(tmp_path / "audit.log")])
    assert report.exit_code == 0, report.output
    assert "3 decisions" in report.output


def test_propagation_turned_back_on_is_respected(tmp_path: Path) -> None:
    setup = """
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    import retrysafe.telemetry
    logging.getLogger("retrysafe.audit").propagate = True
    """
    out = run_app(setup, tmp_path)
    assert len(audit_lines(out)) == 3, out

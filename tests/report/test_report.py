"""``retrysafe report``: tables and the HTML page from audit logs, real and hand-computed."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.asgi_call import call
from kit.stores import require_service
from kit.telemetry import App, audit_to
from retrysafe._policy import Policy
from retrysafe._scopes import shared_scope
from retrysafe.cli._report import report
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.report._slo import DAY, HOUR, MINUTE, Objective
from retrysafe.report._summary import html_page, load, summarize
from retrysafe.stores.memory import MemoryStore
from retrysafe.telemetry import Telemetry

NOW = 1_790_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def line(age: float, outcome: str, status: int, op: str = "POST /pay", **extra: object) -> str:
    doc = {"ts": NOW - age, "operation": op, "outcome": outcome, "status": status}
    doc |= {"surface": "http", "billable": outcome in ("executed", "expired", "recovered")}
    doc |= extra
    # A logging format with a prefix, as many deployments have: the report skips it.
    return "2026-09-21 12:00:00 INFO retrysafe.audit " + json.dumps(doc)


def hand_log(path: Path) -> Path:
    """The fixture of test_slo.test_every_window_on_a_hand_computed_log, as a file."""
    lines = [line(10 * DAY, "executed", 201, duration_s=0.01, key=f"a{i}") for i in range(900)]
    lines += [line(2 * HOUR, "executed", 201, duration_s=0.02, attempt=1) for _ in range(90)]
    lines += [line(2 * HOUR, "executed", 500, duration_s=2.0, attempt=2) for _ in range(10)]
    lines += [line(MINUTE, "replayed", 201, cost={"USD": 0.5}, key="r") for _ in range(5)]
    lines += [line(MINUTE, "store_error", 503) for _ in range(5)]
    lines += [line(MINUTE, "mismatch", 422, op="POST /<b>&") for _ in range(7)]
    lines += ["some unrelated log line", "{not json", ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_summary_matches_hand_computed_burn_rates(tmp_path: Path) -> None:
    log = load(hand_log(tmp_path / "audit.log"))
    assert len(log.records) == 1017
    assert log.skipped == 2
    summary = summarize(log, [Objective("POST /pay", success=0.99, latency_s=None)])
    assert summary.now == NOW - MINUTE
    (status,) = summary.slo  # "POST /<b>&" matches no objective
    a = status.availability
    assert a.burn[HOUR] == pytest.approx(50.0)
    assert a.burn[6 * HOUR] == pytest.approx((15 / 110) / 0.01)
    assert a.budget_remaining == pytest.approx(1 - (15 / 1010) / 0.01)
    assert [al.window.severity for al in a.alerts] == ["page", "page", "ticket"]
    assert summary.replays == 5
    assert summary.cost_avoided == {"USD": 2.5}
    assert summary.attempts == {1: 90, 2: 10}
    assert summary.decisions_per_key == {1: 900, 5: 1}


def test_cli_prints_tables_and_writes_a_well_formed_page(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        report,
        [
            "--log",
            str(hand_log(tmp_path / "audit.log")),
            "--html",
            str(out),
            "--objective",
            "POST /pay=99,1s@90",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    text = result.output
    for title in ("Outcomes by operation", "Retries", "Replays and cost", "SLO status"):
        assert title in text
    assert "Burn-rate alerts" in text
    assert "page" in text
    assert "ticket" in text
    assert "2.5 USD" in text  # cost avoided by the five replays
    page = out.read_text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=""", page)  # self-contained: no external assets
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))  # well-formed XML
    svgs = root.findall(f".//{SVG}svg")
    assert len(svgs) == 3
    titles = [svg.findtext(f"{SVG}title") for svg in svgs]
    assert titles == ["Outcomes over time", "Latency distribution", "Error budget remaining"]
    assert root.findall(f".//{SVG}rect")
    assert root.findall(f".//{SVG}polyline")
    assert "POST /&lt;b&gt;&amp;" in page  # operation names are escaped


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    result = CliRunner().invoke(report, ["--log", str(empty)])
    assert result.exit_code == 1
    assert "holds no audit records" in result.output
    log = hand_log(tmp_path / "audit.log")
    result = CliRunner().invoke(report, ["--log", str(log), "--objective", "*=150"])
    assert result.exit_code == 2
    assert "--objective" in result.output


def test_report_from_a_real_middleware_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with audit_to(logging.FileHandler(path)):
        app = App()
        app.cost = 0.25
        mw = ASGIIdempotencyMiddleware(
            app, store=MemoryStore(), telemetry=Telemetry(), policy=Policy(scope=shared_scope)
        )

        async def traffic() -> None:
            await call(mw, headers=[("Idempotency-Attempt", "1")])
            await call(mw, headers=[("Idempotency-Attempt", "2")])
            await call(mw, body=b"other")
            await call(mw, key="k-2")

        asyncio.run(traffic())
    summary = summarize(load(path))
    (stats,) = summary.operations.values()
    assert dict(stats.outcomes) == {"executed": 2, "replayed": 1, "mismatch": 1}
    assert summary.cost_avoided == {"USD": 0.25, "tokens": 1200.0}
    assert summary.cost_spent == {"USD": 0.5, "tokens": 2400.0}
    assert summary.billable == 2
    assert summary.replays == 1
    (status,) = summary.slo
    assert status.availability.budget_remaining == 1.0
    assert status.client_errors == 1


def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        require_service("chromium", "install Debian's chromium package")
        return
    page = tmp_path / "report.html"
    summary = summarize(load(hand_log(tmp_path / "audit.log")))
    page.write_text(html_page(summary))
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # The browser parsed the three charts and their shapes, and logged no script errors.
    assert dom.count("<svg") == 3
    assert dom.count("<polyline") == page.read_text().count("<polyline")
    assert "Uncaught" not in done.stderr
    assert "SyntaxError" not in done.stderr


def test_report_is_a_subcommand_of_retrysafe() -> None:
    from retrysafe.cli._commands import cli

    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0
    assert "--objective" in result.output

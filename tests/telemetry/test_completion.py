"""Success by completion (SPEC 35a): one key is one operation, whatever its attempts.

The verdict per key from audit lines, the SLI with its budget and alerts, the numbers in the
report's text and HTML, and what ``@idempotent_tool``, ``@idempotent`` and the middleware put
on spans and metrics (the OpenTelemetry SDK's in-memory exporters) — including an agent that
crashed around a tool call and retried it.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kit.asgi_call import call
from kit.children import child_argv, child_env
from kit.stores import FakeClock
from kit.telemetry import AuditLines, Otel, audit_to
from kit.telemetry_charge_tool import RUN_ID, charge_tool
from retrysafe import Completion, KeyMismatch, Policy
from retrysafe._completion import decision
from retrysafe._scopes import shared_scope
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.report._completion import by_operation, fates
from retrysafe.report._slo import HOUR, MINUTE, Event, Objective, evaluate, parse_objective
from retrysafe.report._summary import (
    COMPLETION_TITLE,
    Log,
    html_page,
    load,
    render,
    summarize,
)
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.sqlite import SQLiteStore
from retrysafe.tools import agent_run, idempotent, idempotent_tool

NOW = 1_900_000_000.0


def verdict(*decisions: tuple[str, int | None]) -> Completion:
    """The verdict on one key whose decisions came in this order."""
    (fate,) = fates(
        (NOW - 100 + i, "POST /pay", "client", "k", outcome, status)
        for i, (outcome, status) in enumerate(decisions)
    )
    return fate.completion


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ([("executed", 201)], Completion.ONCE),
        ([("executed", 201), ("replayed", 201), ("replayed", 201)], Completion.ONCE),
        ([("conflict_in_flight", 409), ("executed", 201)], Completion.ONCE),
        ([("replayed", 201)], Completion.ONCE),  # its run is older than the log
        ([("executed", 201), ("unreplayable", 409)], Completion.ONCE),
        ([("store_error", 503), ("executed", 201)], Completion.ONCE),  # failed closed: no run
        ([("executed", 201), ("expired", 201)], Completion.DUPLICATED),
        ([("replayed", 201), ("expired", 201)], Completion.DUPLICATED),
        ([("recovered", 200)], Completion.DUPLICATED),  # the crashed run left no line
        ([("executed", 500), ("executed", 201)], Completion.DUPLICATED),
        ([("executed", 500), ("executed", 500)], Completion.FAILED),
        ([("store_error", None)], Completion.FAILED),
        ([("executed", 201), ("mismatch", 422)], Completion.ONCE),  # the key's run stands
        ([("mismatch", 422)], Completion.REJECTED),
        ([("mismatch", None)], Completion.REJECTED),  # tool refusals carry no status
        ([("executed", 500), ("conflict_in_flight", 409)], Completion.REJECTED),
        ([("executed", 404), ("replayed", 404)], Completion.REJECTED),
        ([("executed", 200), ("replayed", 500)], Completion.ONCE),
    ],
)
def test_the_verdict_per_key(decisions: list[tuple[str, int | None]], expected: Completion) -> None:
    assert verdict(*decisions) is expected


def test_keys_are_told_apart_by_operation_and_client_and_keyless_lines_left_out() -> None:
    lines = [
        (NOW - 3, "POST /pay", "alice", "k", "executed", 201),
        (NOW - 2, "POST /pay", "bob", "k", "executed", 201),  # the same key, another scope
        (NOW - 1, "POST /refund", "alice", "k", "executed", 201),
        (NOW - 1, "POST /pay", "alice", "", "rejected", 400),  # no usable key
    ]
    found = by_operation(fates(lines))
    assert {op: c.keys for op, c in found.items()} == {"POST /pay": 2, "POST /refund": 1}
    assert all(c.verdicts[Completion.ONCE] == c.keys for c in found.values())


def test_a_decision_alone_tells_what_it_knows() -> None:
    assert decision("executed", 201).completion is Completion.ONCE
    assert decision("replayed", 201).completion is Completion.ONCE
    assert decision("expired", 201).completion is Completion.DUPLICATED
    assert decision("executed", 500).completion is Completion.FAILED
    assert decision("mismatch", None).completion is Completion.REJECTED


# -- the SLI ---------------------------------------------------------------------------------


def retried_hour(keys: int, duplicate_every: int | None) -> list[Event]:
    """``keys`` operations over the last hour, each a run that timed out on the client and a
    retry answered by its replay; every ``duplicate_every``-th key ran again after its TTL."""
    events = []
    for i in range(keys):
        ts = NOW - HOUR + (i + 1) * HOUR / keys
        events.append(Event(ts - 1, "POST /pay", "executed", 201, 0.01, "c", f"k{i}"))
        again = "expired" if duplicate_every and i % duplicate_every == 0 else "replayed"
        events.append(Event(ts, "POST /pay", again, 201, 0.01, "c", f"k{i}"))
    return events


def test_a_retry_answered_by_its_replay_is_one_good_key() -> None:
    (status,) = evaluate(retried_hour(1000, None), [Objective(latency_s=None)], NOW)
    assert status.completion is not None
    assert (status.completion.good, status.completion.bad) == (1000, 0)  # not 2000 decisions
    assert status.completion.budget_remaining == 1.0


def test_duplicates_burn_the_completion_budget_and_page() -> None:
    objective = Objective(latency_s=None, completion=0.999)
    (status,) = evaluate(retried_hour(2000, 20), [objective], NOW)  # 5 % ran twice
    completion = status.completion
    assert completion is not None
    assert (completion.good, completion.bad) == (1900, 100)
    assert completion.burn[HOUR] == pytest.approx(0.05 / 0.001)
    assert completion.budget_remaining == pytest.approx(1 - 50.0)
    assert {(sli, a.window.severity) for sli, a in status.alerts} >= {("completion", "page")}
    assert status.availability.bad == 0  # every answer was a 201: availability saw nothing
    (quiet,) = evaluate(retried_hour(2000, None), [objective], NOW)
    assert not [a for sli, a in quiet.alerts if sli == "completion"]


def test_a_key_counts_at_its_last_decision() -> None:
    events = [
        Event(NOW - 2 * HOUR, "POST /pay", "executed", 500, client="c", key="k"),
        Event(NOW - 2 * MINUTE, "POST /pay", "executed", 201, client="c", key="k"),
    ]
    (status,) = evaluate(events, [Objective(latency_s=None)], NOW)
    assert status.completion is not None
    assert status.completion.burn[HOUR] > 0  # bad (ran twice), and inside the last hour
    assert status.completion.burn[5 * MINUTE] > 0


def test_the_objective_takes_a_completion_target_or_none() -> None:
    assert parse_objective("*=99.9,once:99.5").completion == pytest.approx(0.995)
    assert parse_objective("*=99.9").completion == pytest.approx(0.999)
    (status,) = evaluate(retried_hour(10, 2), [Objective(completion=None)], NOW)
    assert status.completion is None
    with pytest.raises(ValueError, match="completion must be a fraction"):
        Objective(completion=1.5)


# -- the report ------------------------------------------------------------------------------


def hand_records() -> list[dict[str, Any]]:
    """POST /pay: 10 keys, 6 completed once (3 of them after a retry got the replay), 2
    duplicated, 1 failed, 1 rejected, plus a request without a key; tool search: 2 keys."""
    out: list[dict[str, Any]] = []

    def add(op: str, key: str, outcome: str, status: int | None, **extra: Any) -> None:
        out.append(
            {"ts": NOW - 100 + len(out), "operation": op, "key": key, "outcome": outcome}
            | {"status": status, "scope": "s" * 64, "duration_s": 0.01}
            | extra
        )

    for i in range(6):
        add("POST /pay", f"p{i}", "executed", 201)
        if i < 3:
            add("POST /pay", f"p{i}", "replayed", 201, attempt=2)
    add("POST /pay", "d1", "executed", 201)
    add("POST /pay", "d1", "expired", 201)
    add("POST /pay", "d2", "executed", 500)
    add("POST /pay", "d2", "executed", 201)
    add("POST /pay", "f1", "executed", 500)
    add("POST /pay", "f1", "executed", 500)
    add("POST /pay", "r1", "mismatch", 422)
    add("POST /pay", "", "rejected", 400)
    add("search", "t1", "executed", 200, run_id="run-1", surface="tool")
    add("search", "t1", "replayed", 200, run_id="run-1", surface="tool")
    add("search", "t2", "recovered", 200, run_id="run-2", surface="tool")
    return out


EXPECTED_ROWS = [
    ["POST /pay", "10", "6", "3", "2", "1", "1"],
    ["search", "2", "1", "1", "1", "0", "0"],
]


def text_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the rich table printed under ``title``."""
    lines = text[text.index(title) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("│"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def html_rows(page: str, title: str) -> list[list[str]]:
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))
    body = root.find("{http://www.w3.org/1999/xhtml}body")
    assert body is not None
    children = list(body)
    heading = next(i for i, el in enumerate(children) if el.text == title)
    table = children[heading + 1]
    return [
        ["".join(td.itertext()) for td in tr]
        for tr in table.iter("{http://www.w3.org/1999/xhtml}tr")
        if tr.find("{http://www.w3.org/1999/xhtml}td") is not None
    ]


def test_the_report_counts_keys_in_text_and_html() -> None:
    objectives = [Objective(latency_s=None, completion=0.99)]
    summary = summarize(Log(hand_records(), 0), objectives, NOW)
    out = io.StringIO()
    render(summary, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert text_rows(text, COMPLETION_TITLE) == EXPECTED_ROWS
    slo = {(r[0], r[1]): r[2:] for r in text_rows(text, "SLO status")}
    # 6 of 10 keys completed once: 60 %, against 99 % the budget is 40 times overspent.
    assert slo[("POST /pay", "completion")] == ["60.000%", "99.000%", "-3900.0%"]
    assert slo[("search", "completion")] == ["50.000%", "99.000%", "-4900.0%"]
    alerts = {tuple(row[:3]) for row in text_rows(text, "Burn-rate alerts")}
    assert {("page", "POST /pay", "completion"), ("page", "search", "completion")} <= alerts

    page = html_page(summary)
    assert html_rows(page, COMPLETION_TITLE) == EXPECTED_ROWS
    slo_rows = {(r[0], r[1]): r[2:5] for r in html_rows(page, "SLO status")}
    assert slo_rows[("POST /pay", "completion")] == ["60.000%", "99.000%", "-3900.0%"]


# -- spans and metrics -----------------------------------------------------------------------


def completions(otel: Otel) -> dict[tuple[str, str], int]:
    return {
        (p.attributes["retrysafe.operation"], p.attributes["retrysafe.completion"]): p.value
        for p in otel.points().get("retrysafe.completions", [])
    }


def test_tool_spans_and_metrics(otel: Otel) -> None:
    clock = FakeClock(start=NOW)
    store = MemoryStore(clock=clock)
    runs: list[str] = []

    @idempotent_tool(store, name="search", ttl=10, telemetry=otel.telemetry())
    def search(query: str) -> list[str]:
        runs.append(query)
        return [query]

    with agent_run("run-1"):
        search("a")
        search("a")  # the agent's retry: the replay
        assert completions(otel) == {("search", "once"): 1}  # one completion, not two
        clock.advance(30)  # past the TTL
        search("a")  # run again
    assert runs == ["a", "a"]
    spans = otel.spans()
    assert [s.attributes["idempotency.outcome"] for s in spans] == [
        "executed",
        "replayed",
        "expired",
    ]
    assert [s.attributes["retrysafe.completion"] for s in spans] == [
        "once",
        "once",
        "duplicated",
    ]
    assert completions(otel) == {("search", "once"): 1, ("search", "duplicated"): 1}


def test_function_failures_and_refusals_are_not_completions(otel: Otel) -> None:
    @idempotent(MemoryStore(), key=lambda n: "k", telemetry=otel.telemetry())
    def flaky(n: int) -> int:
        if n < 0:
            raise RuntimeError("down")
        return n

    with pytest.raises(RuntimeError):
        flaky(-1)
    assert flaky(1) == 1  # the failed run released the key: this one runs
    with pytest.raises(KeyMismatch):
        flaky(2)
    assert [s.attributes["retrysafe.completion"] for s in otel.spans()] == [
        "failed",
        "once",
        "rejected",
    ]
    # A decision cannot see the earlier failed run; the audit log can (the report says
    # duplicated for this key: test_the_verdict_per_key).
    assert {c: n for (_, c), n in completions(otel).items()} == {"once": 1}


async def test_http_spans_and_metrics(otel: Otel, audit_log: AuditLines) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = ASGIIdempotencyMiddleware(
        app, store=MemoryStore(), policy=Policy(scope=shared_scope), telemetry=otel.telemetry()
    )
    assert (await call(mw, key="k-1")).status == 201
    assert (await call(mw, key="k-1")).status == 201  # the retry: a replay
    assert [s.attributes["retrysafe.completion"] for s in otel.ours()] == ["once", "once"]
    assert completions(otel) == {("POST /pay", "once"): 1}
    summary = summarize(Log(audit_log.docs(), 0))
    assert summary.completion["POST /pay"].retried == 1


# -- an agent that crashed around a tool call ------------------------------------------------


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "audit.log"
    # audit_to sets INFO itself: this fixture once only added its handler, and found no line
    # after a test elsewhere in the worker had left the logger at NOTSET (the root's WARNING).
    with audit_to(logging.FileHandler(path)):
        yield path


def _one_line(ledger: Path) -> bool:
    return ledger.exists() and ledger.read_text().endswith("\n")


def crash(mode: str, db: Path, audit: Path, ledger: Path) -> None:
    """Run the worker: it crashes after the call completed, or is killed inside it."""
    args = [mode, str(db), str(audit), str(ledger)]
    worker = subprocess.Popen(
        child_argv("telemetry_completion_child", *args),
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    if mode == "during":
        deadline = time.monotonic() + 60  # bounds a hang only
        # Until the side effect is done: its whole line, not just the file (the child opens
        # the ledger before it writes, and a kill in between left it empty under load).
        while not _one_line(ledger) and worker.poll() is None and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        worker.send_signal(signal.SIGKILL)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, err[-3000:]
    assert len(ledger.read_text().splitlines()) == 1


@pytest.mark.slow
def test_a_tool_call_retried_after_a_crash_gets_the_replay_one_success(
    tmp_path: Path, otel: Otel, audit_file: Path
) -> None:
    db, ledger = tmp_path / "agent.db", tmp_path / "ledger"
    crash("after", db, audit_file, ledger)  # ran, completed; the agent died before using it
    charge = charge_tool(SQLiteStore(db), ledger, telemetry=otel.telemetry())
    with agent_run(RUN_ID):
        assert charge("cus_1", 500) == "charged cus_1 500"  # the agent's retry after restart
    assert len(ledger.read_text().splitlines()) == 1  # not run again
    (span,) = otel.spans()
    assert span.attributes["idempotency.outcome"] == "replayed"
    assert span.attributes["retrysafe.completion"] == "once"
    assert completions(otel) == {}  # the completion was counted where the tool ran
    summary = summarize(load(audit_file))
    assert [(d["outcome"], d["status"]) for d in summary.records] == [
        ("executed", 200),
        ("replayed", 200),
    ]
    counts = summary.completion["charge"]
    assert (counts.keys, counts.verdicts[Completion.ONCE], counts.retried) == (1, 1, 1)
    (status,) = summary.slo
    assert status.completion is not None
    assert (status.completion.good, status.completion.bad) == (1, 0)


@pytest.mark.slow
def test_a_tool_call_killed_mid_run_and_run_again_is_duplicated(
    tmp_path: Path, otel: Otel, audit_file: Path
) -> None:
    db, ledger = tmp_path / "agent.db", tmp_path / "ledger"
    crash("during", db, audit_file, ledger)
    later = SQLiteStore(db, clock=lambda: time.time() + HOUR)  # the dead holder's lease lapsed
    charge = charge_tool(later, ledger, telemetry=otel.telemetry())
    with agent_run(RUN_ID):
        assert charge("cus_1", 500) == "charged cus_1 500"
    assert len(ledger.read_text().splitlines()) == 2  # the side effect happened twice
    (span,) = otel.spans()
    assert span.attributes["idempotency.outcome"] == "recovered"
    assert span.attributes["retrysafe.completion"] == "duplicated"
    assert completions(otel) == {("charge", "duplicated"): 1}
    summary = summarize(load(audit_file))
    assert [d["outcome"] for d in summary.records] == ["recovered"]  # the dead wrote no line
    assert summary.completion["charge"].verdicts == {Completion.DUPLICATED: 1}
    assert json.loads(audit_file.read_text().splitlines()[0])["run_id"] == RUN_ID

"""Success by completion on the client (SPEC 35a): a call is one operation, however many attempts.

A first attempt that ran and a retry answered by its replay are one success (``once``), not a
failure and a success. Against a real server, with the OpenTelemetry SDK's in-memory exporters
(in a child process: the client's providers are the global ones, settable once per process),
and on a scripted network for the rest of the rules.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.children import child_argv, child_env
from kit.client_harness import Harness, Script, problem, reply
from retrysafe import Completion
from retrysafe.client import CallReport, RetryPolicy
from retrysafe.report._summary import load, summarize

REPLAYED = {"Idempotent-Replayed": "true"}


def child(scenario: str, flavor: str, audit: Path) -> dict[str, Any]:
    done = subprocess.run(
        child_argv("client_completion_child", scenario, flavor, str(audit)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def attempt_spans(out: dict[str, Any]) -> list[dict[str, Any]]:
    spans = [s for s in out["spans"] if s["kind"] == "CLIENT"]
    assert [s["name"] for s in spans] == ["POST", "POST"]
    return [s["attributes"] for s in spans]


@pytest.mark.slow
def test_a_run_that_timed_out_and_its_replay_are_one_success(flavor: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    out = child("lost-answer", flavor, audit)
    assert out["status"] == 201
    report = out["report"]
    assert (report["attempts"], report["outcome"], report["replayed"]) == (2, "replayed", True)
    assert (report["completion"], report["completed_once"]) == ("once", True)
    # One call, one success: no "failed" for the attempt that timed out.
    assert [(p["attributes"]["retrysafe.completion"], p["value"]) for p in out["calls"]] == [
        ("once", 1)
    ]
    assert out["calls"][0]["attributes"]["server.address"] == "127.0.0.1"
    first, second = attempt_spans(out)
    assert first["error.type"] == "ReadTimeout"
    assert "retrysafe.completion" not in first  # the call was not over yet
    assert second["retrysafe.completion"] == "once"
    assert second["http.request.resend_count"] == 1
    # The server's audit log says the same of the key: ran once, the retry got the replay.
    summary = summarize(load(audit))
    assert [d["outcome"] for d in summary.records] == ["executed", "replayed"]
    counts = summary.completion["POST /pay"]
    assert (counts.keys, counts.verdicts[Completion.ONCE], counts.retried) == (1, 1, 1)
    (status,) = summary.slo
    assert status.completion is not None
    assert (status.completion.good, status.completion.bad) == (1, 0)


@pytest.mark.slow
def test_a_key_run_again_after_its_ttl_is_not_exactly_once(flavor: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    out = child("expired", flavor, audit)
    assert out["status"] == 201
    report = out["report"]
    assert (report["attempts"], report["outcome"]) == (2, "succeeded")
    assert (report["completion"], report["completed_once"]) == ("duplicated", False)
    assert [(p["attributes"]["retrysafe.completion"], p["value"]) for p in out["calls"]] == [
        ("duplicated", 1)
    ]
    assert attempt_spans(out)[1]["retrysafe.completion"] == "duplicated"
    summary = summarize(load(audit))
    assert [d["outcome"] for d in summary.records] == ["executed", "expired"]
    counts = summary.completion["POST /pay"]
    assert (counts.keys, counts.verdicts[Completion.DUPLICATED]) == (1, 1)
    (status,) = summary.slo
    assert status.completion is not None
    assert (status.completion.good, status.completion.bad) == (0, 1)


@pytest.mark.slow
def test_a_call_that_gives_up_is_failed_on_its_last_attempt(tmp_path: Path) -> None:
    out = child("unreachable", "sync", tmp_path / "audit.log")
    assert out["status"] is None  # RetriesExhausted: no response, no CallReport
    assert [(p["attributes"]["retrysafe.completion"], p["value"]) for p in out["calls"]] == [
        ("failed", 1)
    ]
    spans = [s["attributes"] for s in out["spans"] if s["kind"] == "CLIENT"]
    assert len(spans) == 3
    assert [s.get("retrysafe.completion") for s in spans] == [None, None, "failed"]


# -- the rule, on a scripted network ---------------------------------------------------------


def completion(response: httpx.Response) -> Completion | None:
    info = response.extensions["retrysafe"]
    assert isinstance(info, CallReport)
    assert info.completed_once is (info.completion is Completion.ONCE)
    return info.completion


@pytest.mark.parametrize(
    ("answers", "verdict"),
    [
        ([reply(201)], Completion.ONCE),
        ([httpx.ReadTimeout("lost"), reply(201, REPLAYED)], Completion.ONCE),
        ([httpx.ConnectError("never sent"), reply(201)], Completion.ONCE),
        ([reply(503), reply(429), reply(201)], Completion.ONCE),  # neither ran anything
        ([problem(409, "request-in-flight"), reply(201, REPLAYED)], Completion.ONCE),
        ([httpx.ReadTimeout("lost"), reply(201)], Completion.DUPLICATED),
        ([reply(500), reply(201)], Completion.DUPLICATED),  # the failed run ran
        ([reply(502), httpx.ReadTimeout("lost"), reply(201, REPLAYED)], Completion.DUPLICATED),
        ([reply(500, REPLAYED)], Completion.FAILED),  # a stored server error
        ([reply(404)], Completion.REJECTED),
    ],
)
def test_what_became_of_the_operation(
    flavor: str, answers: list[httpx.Response | Exception], verdict: Completion
) -> None:
    response = Harness(flavor, Script(*answers)).post()
    assert completion(response) is verdict


def test_a_mismatch_is_rejected(flavor: str) -> None:
    h = Harness(
        flavor, Script(problem(422, "key-mismatch")), retry=RetryPolicy(raise_on_mismatch=False)
    )
    assert completion(h.post()) is Completion.REJECTED


def test_a_call_without_a_key_has_no_completion(flavor: str) -> None:
    response = Harness(flavor, Script(reply(200))).request("GET", "http://api.test/charges")
    assert completion(response) is None

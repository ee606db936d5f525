"""``retrysafe check`` and ``check_endpoint`` against real servers on loopback.

The checker must pass what honours keys (the middleware on every store, the gateway in front of a
bare app), fail what does not (a bare app; a naive check-then-set middleware that races), report
what is allowed but not recommended (409 for a mismatch), and say clearly when it cannot judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kit.servers import serve_asgi
from kit.stores import StoreKit
from retrysafe._policy import DEFAULT_STATUS, Policy, Problem
from retrysafe.check import CheckError, check_endpoint, junit_xml
from retrysafe.gateway import GatewayConfig, create_app
from retrysafe.http import ASGIIdempotencyMiddleware, WSGIIdempotencyMiddleware
from retrysafe.stores.memory import MemoryStore

pytestmark = pytest.mark.slow

CASE_IDS = [
    "replay",
    "mismatch",
    "concurrent",
    "lost-response",
    "in-flight-retry-after",
    "missing-key",
    "malformed-key",
    "problem-json",
    "replayed-marker",
    "expiry",
]
MUST = ["replay", "mismatch", "concurrent", "lost-response"]
AUTH = [("Authorization", "Bearer checker-test")]
BODY = {"amount": 1999, "currency": "eur"}


async def create_charge(request: Request) -> Response:
    body = await request.json() if await request.body() else {}
    return JSONResponse({"id": f"ch_{uuid.uuid4().hex}", **body}, status_code=201)


def charges_app(middleware: list[Middleware] | None = None) -> Starlette:
    return Starlette(
        routes=[Route("/charges", create_charge, methods=["POST"])], middleware=middleware
    )


def protected(store: Any, policy: Policy | None = None) -> Starlette:
    options: dict[str, Any] = {"store": store}
    if policy is not None:
        options["policy"] = policy
    return charges_app([Middleware(ASGIIdempotencyMiddleware, **options)])


class NaiveCheckThenSet:
    """The classic broken layer: look the key up, run the handler, store the answer after.

    Its handler stands for one that writes to a database: it is slow, here until a second
    request with its key has arrived (at most 0.5 s, so requests sent one after another still
    finish). Ten requests sent at once therefore meet inside it: the race a naive layer loses
    under load happens on every run, not by chance.
    """

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.arrived: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        key = headers.get(b"idempotency-key", b"").decode("latin-1")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if key in self.answers:
            status, stored = self.answers[key]
        else:
            if key in self.arrived:
                self.arrived[key].set()  # a second request with this key is here
            else:
                self.arrived[key] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived[key].wait(), 0.5)
            status, stored = 201, json.dumps({"id": uuid.uuid4().hex}).encode()
            if key:
                self.answers[key] = (status, stored)
        headers_out = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers_out})
        await send({"type": "http.response.body", "body": stored})


def results(report: Any) -> dict[str, str]:
    return {case.id: case.result for case in report.cases}


def check(url: str, **options: Any) -> Any:
    with httpx.Client(timeout=30) as client:
        return check_endpoint(client, url, json=BODY, headers=AUTH, **options)


def test_the_middleware_passes_every_must_case_on_every_store(kit: StoreKit) -> None:
    with serve_asgi(protected(kit.store, Policy(required=True))) as base:
        report = check(f"{base}/charges", required=True)
    assert [case.id for case in report.cases] == CASE_IDS
    assert report.ok, report.to_dict()
    got = results(report)
    assert got["missing-key"] == "pass"  # required=True: 400 for a keyless request
    assert got["malformed-key"] == "pass"
    assert got["problem-json"] == "pass"
    assert got["replayed-marker"] == "pass"
    assert "Idempotent-Replayed" in report.case("replayed-marker").detail.title()
    assert got["expiry"] == "skip"  # no --ttl


def test_a_bare_app_fails_replay_concurrency_and_the_lost_answer() -> None:
    with serve_asgi(charges_app()) as base:
        report = check(f"{base}/charges")
    got = results(report)
    assert not report.ok
    assert got["replay"] == got["concurrent"] == got["lost-response"] == "fail"
    assert "ran again" in report.case("replay").detail
    # 10 at once, then one more to read what the key holds: each ran
    assert "ran 11 times" in report.case("concurrent").detail
    assert got["mismatch"] == "fail"  # another body under a used key simply runs


def test_a_naive_check_then_set_layer_replays_but_loses_the_race() -> None:
    with serve_asgi(NaiveCheckThenSet()) as base:
        report = check(f"{base}/charges")
    got = results(report)
    assert got["replay"] == "pass"
    assert got["concurrent"] == "fail"
    assert "different answers to one key" in report.case("concurrent").detail


def test_a_409_for_a_mismatch_passes_and_is_reported() -> None:
    status = {**DEFAULT_STATUS, Problem.MISMATCH: 409}
    with serve_asgi(protected(MemoryStore(), Policy(problem_status=status))) as base:
        report = check(f"{base}/charges")
    mismatch = report.case("mismatch")
    assert mismatch.result == "pass"
    assert "recommends 422, not 409" in mismatch.detail
    assert report.ok


def test_the_gateway_in_front_of_a_bare_app_passes(tmp_path: Path) -> None:
    with serve_asgi(charges_app()) as upstream:
        config = GatewayConfig(upstream=upstream, store=f"sqlite:///{tmp_path / 'gw.db'}")
        with serve_asgi(create_app(config), lifespan="on") as gateway:
            report = check(f"{gateway}/charges")
    assert report.ok, report.to_dict()
    assert results(report)["replayed-marker"] == "pass"


def test_identical_answers_make_the_replay_cases_inconclusive_not_passed() -> None:
    async def constant(request: Request) -> Response:
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/charges", constant, methods=["POST"])])
    with serve_asgi(app) as base:
        report = check(f"{base}/charges")
    for case in ("replay", "concurrent", "lost-response"):
        assert report.case(case).result == "skip"
        assert "cannot be told from a second execution" in report.case(case).detail
    assert not report.ok  # a must case that was not proven is not a pass


def test_a_refused_base_request_is_a_check_error_that_says_what_to_send() -> None:
    with serve_asgi(charges_app()) as base, httpx.Client() as client:  # noqa: SIM117
        with pytest.raises(CheckError, match=r"answered 405, not 2xx.*--json/--data"):
            check_endpoint(client, f"{base}/charges", method="PUT", json=BODY)


def test_expiry_is_checked_with_a_ttl() -> None:
    with serve_asgi(protected(MemoryStore(), Policy(ttl=1))) as base:
        report = check(f"{base}/charges", ttl=1)
    assert report.case("expiry").result == "pass", report.case("expiry").detail


async def test_the_library_call_checks_an_asgi_app_in_process() -> None:
    transport = httpx.ASGITransport(app=protected(MemoryStore()))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        report = await check_endpoint(client, "/charges", json=BODY, headers=AUTH)
    assert report.ok, report.to_dict()
    assert results(report)["replay"] == "pass"


def test_the_library_call_checks_a_wsgi_app_in_process() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        payload = json.dumps({"id": uuid.uuid4().hex, **body}).encode()
        start_response(
            "201 Created",
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]

    guarded = WSGIIdempotencyMiddleware(app, store=MemoryStore())
    transport = httpx.WSGITransport(app=guarded)
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        report = check_endpoint(client, "/charges", json=BODY, headers=AUTH)
    assert report.ok, report.to_dict()


# -- the command ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_url() -> Iterator[str]:
    with serve_asgi(protected(MemoryStore())) as base:
        yield f"{base}/charges"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "retrysafe.cli", "check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_json_lists_every_case_and_exits_0(guarded_url: str) -> None:
    done = cli(
        guarded_url, "--json", json.dumps(BODY), "-H", "Authorization: Bearer t", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["target"] == {"method": "POST", "url": guarded_url}
    assert [c["id"] for c in doc["cases"]] == CASE_IDS
    for case in doc["cases"]:
        assert set(case) == {"id", "title", "level", "result", "detail", "reference"}
        assert case["level"] in ("must", "should", "info")
        assert case["result"] in ("pass", "fail", "skip")
    assert doc["summary"]["ok"] is True
    assert doc["summary"]["passed"] == sum(c["result"] == "pass" for c in doc["cases"])


def test_cli_junit_report_parses_and_counts_match(guarded_url: str, tmp_path: Path) -> None:
    out = tmp_path / "check.xml"
    done = cli(
        guarded_url,
        "--json",
        json.dumps(BODY),
        "-H",
        "Authorization: Bearer t",
        "--format",
        "junit",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == CASE_IDS
    assert int(suite.get("tests", "-1")) == len(cases)
    assert int(suite.get("failures", "-1")) == sum(c.find("failure") is not None for c in cases)
    assert int(suite.get("skipped", "-1")) == sum(c.find("skipped") is not None for c in cases)


def test_cli_table_names_failures_and_exits_1_for_a_bare_app() -> None:
    with serve_asgi(charges_app()) as base:
        done = cli(f"{base}/charges", "--json", json.dumps(BODY))
    assert done.returncode == 1, done.stderr
    assert "replay" in done.stdout
    assert "fail" in done.stdout
    assert "a must case did not pass" in done.stdout


def test_cli_refuses_a_host_outside_loopback_without_yes() -> None:
    done = cli("http://192.0.2.10/charges", "--json", "{}")  # refused before any traffic
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr
    assert "--yes" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_unreachable_endpoint_is_one_line_and_exit_2() -> None:
    with serve_asgi(charges_app()) as base:
        pass  # the port is free again once the server stopped
    done = cli(f"{base}/charges", "--json", "{}")
    assert done.returncode == 2
    assert "could not reach" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json", "{nope"], "not JSON"),
        (["-H", "no-colon"], "is not 'Name: value'"),
        (["--json", "{}", "--data", "x"], "as json or as data, not both"),
        (["--json", "{}", "-H", "Idempotency-Key: k"], "sets Idempotency-Key itself"),
    ],
)
def test_cli_usage_errors_say_what_to_fix(guarded_url: str, args: list[str], message: str) -> None:
    done = cli(guarded_url, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_report_renders_as_junit_without_a_server() -> None:
    from retrysafe.check import CaseResult, Report

    report = Report(
        "POST",
        "http://127.0.0.1/x",
        (
            CaseResult("replay", "t", "must", "fail", "ran again", "ref"),
            CaseResult("expiry", "t", "info", "skip", "no ttl", "ref"),
        ),
    )
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "1", "1")
    assert not report.ok

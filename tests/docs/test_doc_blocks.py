"""Every fenced block of README.md and docs/*.md runs as printed, or says why it cannot.

``python`` blocks are executed page by page, in order, in one namespace per page (a later block
may use what an earlier one defined), in a temporary working directory. ``sh`` and ``console``
blocks run their ``retrysafe`` commands with this interpreter (``python -m retrysafe.cli``) in a
temporary directory that holds a generated ``audit.log``; ``http://127.0.0.1:8000`` is a real
server this test starts. A block marked ``<!-- not-run: why -->`` is not executed, but the
``retrysafe`` commands it names are still checked against the CLI (every subcommand and option
must exist). The convention is in CONTRIBUTING.md ("Code blocks in the docs").
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import re
import sqlite3
import subprocess
import sys
import tomllib
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.doc_blocks import (
    DATA_LANGUAGES,
    ROOT,
    RUN_LANGUAGES,
    Block,
    blocks_of,
    commands_of,
    doc_pages,
)
from kit.servers import serve_asgi
from kit.stores import POSTGRES_URL, REDIS_URL, require_service, server_down
from kit.telemetry import audit_to
from retrysafe import open_store
from retrysafe.cli._commands import cli
from retrysafe.http import ASGIIdempotencyMiddleware
from retrysafe.telemetry import AUDIT_LOGGER, Telemetry
from retrysafe.tools import idempotent

BLOCKS = [block for page in doc_pages() for block in blocks_of(page)]
# The addresses the docs use for "your API": the test serves an app that honours keys there.
DOCS_APIS = ("http://127.0.0.1:8000", "https://api.example.com")
CLI_TIMEOUT = 120  # only bounds a hang
# A key belongs to its caller (docs/scopes.md): the examples' default Policy reads Authorization.
CREDENTIALS = {"Authorization": "Bearer sk_test_alice"}


def _ids(block: Block) -> str:
    return block.where


# --- every block is classified --------------------------------------------------------------


def test_every_fence_names_a_known_language() -> None:
    known = RUN_LANGUAGES | DATA_LANGUAGES
    unknown = [f"{b.where}: ```{b.lang}" for b in BLOCKS if b.lang not in known]
    assert not unknown, (
        f"name the fence's language, one of {sorted(known)} (CONTRIBUTING.md, "
        f"'Code blocks in the docs'): {unknown}"
    )


def test_every_not_run_marker_gives_a_reason_and_sits_on_a_runnable_fence() -> None:
    problems = [
        f"{b.where}: `<!-- not-run: -->` without a reason" for b in BLOCKS if b.not_run == ""
    ]
    problems += [
        f"{b.where}: a not-run marker on a ```{b.lang} block, which never runs"
        for b in BLOCKS
        if b.not_run is not None and b.lang not in RUN_LANGUAGES
    ]
    fences = {(b.path, b.line - 1) for b in BLOCKS}
    for page in doc_pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if "not-run" in line and "<!--" in line and (page, number) not in fences:
                problems.append(
                    f"{page.relative_to(ROOT)}:{number}: a marker not right above a fence"
                )
    assert not problems, problems


def test_the_tests_a_reason_names_exist() -> None:
    """A reason saying a block runs in tests/x.py must stay true: that is its only coverage."""
    missing = [
        f"{b.where}: {path}"
        for b in BLOCKS
        for path in re.findall(r"tests/[\w/]+\.py", b.not_run or "")
        if not (ROOT / path).is_file()
    ]
    assert not missing, missing


def test_unmarked_shell_blocks_hold_only_retrysafe_commands() -> None:
    problems = [
        f"{b.where}: cannot run {c.line!r}; run only `retrysafe ...` or mark the block "
        "`<!-- not-run: why -->`"
        for b in BLOCKS
        if b.lang in ("sh", "console") and b.not_run is None
        for c in commands_of(b)
        if c.argv[0] != "retrysafe"
    ]
    problems += [
        f"{b.where}: a shell block without a command (output is ```text)"
        for b in BLOCKS
        if b.lang in ("sh", "console") and not commands_of(b)
    ]
    assert not problems, problems


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("json", "toml")], ids=_ids)
def test_data_blocks_parse(block: Block) -> None:
    if block.lang == "json":
        json.loads(block.text)
    else:
        tomllib.loads(block.text)


# --- the retrysafe commands the docs name exist -----------------------------------------------

_OPTION = re.compile(r"(?<![\w'\"-])(--?[A-Za-z][\w-]*)")


def _resolve(argv: list[str]) -> tuple[list[click.Command], list[str]]:
    """The click command(s) an ``argv`` names (``purge|stats`` names two), and the rest of it."""
    commands: list[click.Command] = [cli]
    rest = argv[1:]
    while rest and all(isinstance(c, click.Group) for c in commands):
        names = rest[0].split("|")
        if not all(re.fullmatch(r"[a-z][a-z-]*", n) for n in names):
            break
        groups = [c for c in commands if isinstance(c, click.Group)]
        found = [g.commands.get(n) for g in groups for n in names]
        assert all(found), f"no subcommand {rest[0]!r} in {argv[0 : len(argv) - len(rest)]}"
        commands = [c for c in found if c is not None]
        rest = rest[1:]
    return commands, rest


def _options(command: click.Command) -> set[str]:
    opts = {"--help"}
    for param in command.params:
        opts.update(param.opts)
        opts.update(param.secondary_opts)
    return opts


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.lang in ("sh", "console")],
    ids=_ids,
)
def test_retrysafe_commands_name_real_subcommands_and_options(block: Block) -> None:
    for command in commands_of(block):
        argv = command.argv
        if "retrysafe" not in argv:  # also after `VAR=value` or a crontab schedule
            continue
        targets, rest = _resolve(argv[argv.index("retrysafe") :])
        # Options are read from the raw line: a synopsis writes `[-n/--operations 300]`.
        named = {opt for word in _OPTION.findall(" ".join(rest)) for opt in word.split("/")}
        for target in targets:
            unknown = named - _options(target)
            assert not unknown, f"{block.where}: `{command.line}`: no option {sorted(unknown)}"


# --- python blocks ----------------------------------------------------------------------------

Check = Callable[[dict[str, Any]], None]


def _check_fastapi_example(ns: dict[str, Any]) -> None:
    async def drive() -> list[httpx.Response]:
        order = {"amount": 1999, "currency": "eur"}
        headers = {"Idempotency-Key": str(uuid.uuid4()), **CREDENTIALS}
        transport = httpx.ASGITransport(app=ns["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [
                await client.post("/charges", json=order, headers=headers),
                await client.post("/charges", json=order, headers=headers),
                await client.post("/charges", json={"amount": 1}, headers=headers),
                await client.post("/charges", json=order),
            ]

    try:
        first, again, other, keyless = asyncio.run(drive())
    finally:
        ns["store"].close()
    assert first.status_code == 201
    assert first.json()["amount"] == 1999
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # same charge id: the handler ran once
    assert other.status_code == 422
    assert keyless.status_code == 400  # Policy(required=True)
    assert Path("retrysafe.db").exists()


def _check_flask_example(ns: dict[str, Any]) -> None:
    app = ns["app"]
    order = {"amount": 1999, "currency": "eur"}
    headers = {
        "Idempotency-Key": str(uuid.uuid4()),
        **CREDENTIALS,
    }  # the page's examples share retrysafe.db
    try:
        # buffered=True: like a real server, read each response to its end (which is when the
        # WSGI middleware stores it) before sending the next request.
        client = app.test_client()
        first = client.post("/charges", json=order, headers=headers, buffered=True)
        again = client.post("/charges", json=order, headers=headers, buffered=True)
        other = client.post("/charges", json={"amount": 1}, headers=headers, buffered=True)
        keyless = client.post("/charges", json=order, buffered=True)
        keyless_again = client.post("/charges", json=order, buffered=True)
    finally:
        app.wsgi_app.store.close()
    assert first.status_code == 201
    assert first.get_json()["amount"] == 1999
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data  # same charge id: the handler ran once
    assert other.status_code == 422
    # The key is optional here: keyless requests run every time, nothing stored.
    assert keyless.status_code == keyless_again.status_code == 201
    assert keyless.get_json()["id"] != keyless_again.get_json()["id"]


def _check_readme_examples_are_short(block: Block) -> None:
    code = [line for line in block.text.splitlines() if line.strip()]
    assert len(code) <= 11, f"{block.where}: the README's framework examples stay ~10 lines"


def _check_atomic_asgi_example(ns: dict[str, Any]) -> None:
    async def drive() -> list[httpx.Response]:
        headers = {"Idempotency-Key": str(uuid.uuid4()), **CREDENTIALS}
        transport = httpx.ASGITransport(app=ns["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            order = {"id": "o-asgi", "cents": 1999}
            return [await client.post("/charges", json=order, headers=headers) for _ in "12"]

    first, again = asyncio.run(drive())
    assert first.status_code == again.status_code == 201, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert _charges_rows("o-asgi") == 1


def _check_atomic_wsgi_example(ns: dict[str, Any]) -> None:
    client = ns["flask_app"].test_client()
    headers = {"Idempotency-Key": str(uuid.uuid4()), **CREDENTIALS}
    order = {"id": "o-wsgi", "cents": 1999}
    first, again = (
        client.post("/charges", json=order, headers=headers, buffered=True) for _ in "12"
    )
    assert first.status_code == again.status_code == 201, first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert _charges_rows("o-wsgi") == 1


def _charges_rows(order_id: str) -> int:
    with contextlib.closing(sqlite3.connect("app.db")) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM charges WHERE order_id = ?", (order_id,)
        ).fetchone()
    return int(count)


def _check_endpoint_example(ns: dict[str, Any]) -> None:
    """docs/check.md's pytest example, run against a real app that honours keys."""
    with _docs_store(Path.cwd()) as app:
        ns["app"] = app
        asyncio.run(ns["test_charges_honour_idempotency_keys"]())


# After a block runs, the checks for it (page, a line of the block) look at what it built. The
# framework examples only define an app: these drive it as a reader's curl would.
CHECKS: dict[tuple[str, str], Check] = {
    ("README.md", "app = FastAPI()"): _check_fastapi_example,
    ("README.md", "app = Flask(__name__)"): _check_flask_example,
    ("docs/atomic.md", "app = FastAPI()"): _check_atomic_asgi_example,
    ("docs/atomic.md", "flask_app = Flask(__name__)"): _check_atomic_wsgi_example,
    ("docs/check.md", "async def test_charges_honour_idempotency_keys"): _check_endpoint_example,
}


def _checks_for(block: Block) -> list[Check]:
    page = str(block.path.relative_to(ROOT))
    return [
        check for (where, line), check in CHECKS.items() if where == page and line in block.text
    ]


def _require_services(block: Block) -> None:
    """Skip (or fail in CI) when a block talks to a Redis or PostgreSQL that is not there."""
    for scheme, url, name in (
        ("redis://", REDIS_URL, "Redis"),
        ("postgresql", POSTGRES_URL, "PostgreSQL"),
    ):
        if scheme in block.text and (why := server_down(url)):
            require_service(name, f"{block.where} needs it: {why}")


def _exec(block: Block, ns: dict[str, Any], tmp: Path) -> None:
    """Run one block; a top-level ``await`` runs as in ``python -m asyncio``."""
    with _docs_apis(block, tmp) as served:
        # Leading newlines: a traceback names the Markdown line, not the block's.
        _exec_source("\n" * block.line + served(block.text), block, ns)


def _exec_source(source: str, block: Block, ns: dict[str, Any]) -> None:
    code = compile(source, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, ns))
    else:
        exec(code, ns)


PYTHON_PAGES = sorted({b.path for b in BLOCKS if b.lang == "python" and b.not_run is None})


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in PYTHON_PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the examples open sqlite:///retrysafe.db, relative to the cwd
    blocks = [b for b in blocks_of(page) if b.lang == "python" and b.not_run is None]
    for block in blocks:
        _require_services(block)
    # The page runs as an importable module: the default serializer stores a dataclass as
    # `module:qualname` and finds it there again on replay, as it would in the reader's module.
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    ns = module.__dict__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    audit = logging.getLogger(AUDIT_LOGGER)  # docs/observability.md routes it to a file
    handlers, level, propagate = list(audit.handlers), audit.level, audit.propagate
    try:
        for block in blocks:
            checks = _checks_for(block)
            if page.name == "README.md" and checks:
                _check_readme_examples_are_short(block)
            _exec(block, ns, tmp_path)
            for check in checks:
                check(ns)
    finally:
        for handler in set(audit.handlers) - set(handlers):
            audit.removeHandler(handler)
            handler.close()
        audit.setLevel(level)
        audit.propagate = propagate
        for value in ns.values():  # the stores, queues and clients the page opened
            if _closable(value):
                with contextlib.suppress(Exception):
                    value.close()


def _closable(value: object) -> bool:
    if isinstance(value, type | types.ModuleType | types.FunctionType):
        return False
    package = type(value).__module__.split(".")[0]
    return package in ("retrysafe", "httpx") and callable(getattr(value, "close", None))


# --- shell blocks -----------------------------------------------------------------------------


_CHARGE_IDS = itertools.count(1)


async def _charges(request: Request) -> JSONResponse:
    body = await request.json()
    # Each execution answers something new, so `retrysafe check` can tell replays apart.
    return JSONResponse({"id": f"ch_{next(_CHARGE_IDS)}", **body}, status_code=201)


@contextlib.contextmanager
def _docs_store(tmp: Path) -> Iterator[Any]:
    """The app the docs check: POST /charges behind the middleware, on a SQLite store."""
    store = open_store(f"sqlite:///{tmp / 'checked-app.db'}")
    routes = [Route("/charges", _charges, methods=["POST"])]
    try:
        yield ASGIIdempotencyMiddleware(Starlette(routes=routes), store=store)
    finally:
        store.close()


@contextlib.contextmanager
def _docs_apis(block: Block, tmp: Path) -> Iterator[Callable[[str], str]]:
    """Serve that app if the block calls a docs API; give what puts its address in a text."""
    if not any(api in block.text for api in DOCS_APIS):
        yield lambda text: text
        return
    with _docs_store(tmp) as app, serve_asgi(app) as url:

        def served(text: str) -> str:
            for api in DOCS_APIS:
                text = text.replace(api, url)
            return text

        yield served


def _audit_log(path: Path) -> None:
    """A real audit log: what `retrysafe report --log audit.log` reads."""
    store = open_store("memory://")
    with audit_to(logging.FileHandler(path)), contextlib.closing(store):

        @idempotent(store, key=lambda n: str(n), telemetry=Telemetry())
        def pay(n: int) -> int:
            return n

        for n in range(20):
            pay(n % 15)
    assert path.stat().st_size > 0


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retrysafe.cli", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


SHELL_BLOCKS = [b for b in BLOCKS if b.lang in ("sh", "console") and b.not_run is None]


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids)
def test_shell_blocks_run(block: Block, tmp_path: Path) -> None:
    _require_services(block)
    _audit_log(tmp_path / "audit.log")
    with _docs_apis(block, tmp_path) as served:
        for command in commands_of(block):
            done = _run([served(word) for word in command.argv], tmp_path)
            assert done.returncode == 0, (
                f"{block.where}: `{command.line}` exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
            # A transcript shows what the command prints: its labels must still be printed
            # (the numbers are the reader's own).
            for line in command.output:
                label = line.split()[0] if line.strip() else ""
                if label and not re.fullmatch(r"[\d.,%]+", label):
                    assert label in done.stdout, f"{block.where}: {label!r} is no longer printed"

"""``retrysafe check URL``: the click command (logic: :mod:`retrysafe.check`).

Exit status: 0 when every ``must`` case passes, 1 when one does not, 2 for usage errors, an
unreachable endpoint, or one that refuses the base request.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from retrysafe.cli._args import parse_header
from retrysafe.cli._errors import BadInput

RESULT_STYLE = {"pass": "green", "fail": "red", "skip": "yellow"}


def _loopback_only(url: str) -> None:
    """Refuse a host outside 127.0.0.0/8 and ::1: the checker repeats requests that act."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{url!r} is not an http:// or https:// URL with a host")
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise BadInput(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not all(address.is_loopback for address in addresses):
        raise BadInput(
            f"{host} is not a loopback address. The checker sends duplicate and concurrent "
            "requests that may execute real operations (charges, e-mails): point it at a test "
            "deployment or sandbox and pass --yes to confirm."
        )


@click.command("check")
@click.argument("url")
@click.option("--method", "-X", default="POST", show_default=True, help="the request method")
@click.option("--json", "json_body", metavar="BODY", help="a JSON request body")
@click.option("--data", metavar="BODY", help="a raw request body")
@click.option(
    "--header", "-H", "headers", multiple=True, metavar="'Name: value'", help="repeatable"
)
@click.option("--key-header", default="Idempotency-Key", show_default=True)
@click.option("--required", is_flag=True, help="keyless requests must be refused (400)")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(2, 200))
@click.option(
    "--ttl", type=click.FloatRange(0), metavar="SECONDS", help="check expiry after this long"
)
@click.option(
    "--mismatch-json", metavar="BODY", help="another body the endpoint accepts (default: derived)"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "junit"]),
    default="table",
    show_default=True,
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="write here")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--yes", is_flag=True, help="allow a host outside the loopback range")
def check(
    url: str,
    method: str,
    json_body: str | None,
    data: str | None,
    headers: tuple[str, ...],
    key_header: str,
    required: bool,
    concurrency: int,
    ttl: float | None,
    mismatch_json: str | None,
    fmt: str,
    output: Path | None,
    timeout: float,
    yes: bool,
) -> None:
    """Check how URL honours Idempotency-Key: replays, mismatches, races, lost answers, errors."""
    import httpx

    from retrysafe.check import CheckError, check_endpoint, junit_xml

    def parsed(text: str | None, option: str) -> object:
        try:
            return None if text is None else json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from exc

    if not yes:
        _loopback_only(url)
    if output is not None and not output.parent.is_dir():
        raise BadInput(f"cannot write {output}: {output.parent} is not a directory")
    try:
        with httpx.Client(timeout=timeout) as client:
            report = check_endpoint(
                client,
                url,
                method=method,
                json=parsed(json_body, "--json"),
                data=data,
                headers=[parse_header(h, "-H") for h in headers],
                key_header=key_header,
                required=required,
                concurrency=concurrency,
                ttl=ttl,
                mismatch_json=parsed(mismatch_json, "--mismatch-json"),
            )
    except (CheckError, ValueError) as exc:
        raise BadInput(str(exc)) from exc
    if fmt == "table":
        _table(report)
    else:
        text = json.dumps(report.to_dict(), indent=2) if fmt == "json" else junit_xml(report)
        if output is None:
            click.echo(text)
        else:
            output.write_text(text + "\n", encoding="utf-8")
    sys.exit(0 if report.ok else 1)


def _table(report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from retrysafe.check import Report

    assert isinstance(report, Report)
    table = Table(title=f"{report.method} {report.url}", title_justify="left", expand=False)
    table.add_column("case", no_wrap=True)
    table.add_column("level")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for case in report.cases:
        style = RESULT_STYLE[case.result]
        detail = case.detail if case.result != "fail" else f"{case.detail}\n[dim]{case.reference}"
        table.add_row(case.id, case.level, f"[{style}]{case.result}", detail)
    console = Console()
    console.print(table)
    s = report.summary
    verdict = "[green]every must case passed" if report.ok else "[red]a must case did not pass"
    console.print(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped: {verdict}")

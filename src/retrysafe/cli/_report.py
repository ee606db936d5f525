"""``retrysafe report --log FILE``: the click command (logic: :mod:`retrysafe.report`).

Registered on the ``retrysafe`` group in :mod:`retrysafe.cli._commands`.
"""

from __future__ import annotations

from pathlib import Path

import click

from retrysafe.cli._errors import BadInput

OBJECTIVE_HELP = (
    "an SLO as PATTERN=SUCCESS%[,THRESHOLD@LATENCY%][,keys:CORRECT%][,once:ONCE%][,WINDOW], e.g."
    " 'POST /pay*=99.9,300ms@95,keys:99.5,once:99.9,30d' (ONCE: the share of keys completed"
    " exactly once; repeatable; the first matching pattern applies; default"
    " '*=99.9,1s@99,keys:99.9,once:99.9,30d')"
)


@click.command("report")
@click.option(
    "--log",
    "log_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="an audit log: JSON lines written by the retrysafe.audit logger",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="also write a self-contained HTML page with charts here",
)
@click.option("--objective", "objectives", multiple=True, metavar="SLO", help=OBJECTIVE_HELP)
@click.option(
    "--now",
    type=float,
    default=None,
    help="evaluate the SLOs at this Unix time (default: the last record's time)",
)
def report(
    log_path: Path, html_out: Path | None, objectives: tuple[str, ...], now: float | None
) -> None:
    """Outcomes, retries, replays and cost avoided, conflicts, completion by key, SLO status and
    burn-rate alerts."""
    from rich.console import Console

    from retrysafe import report as logic

    if html_out is not None and not html_out.parent.is_dir():  # say so before the work
        raise BadInput(
            f"--html: directory {str(html_out.parent)!r} does not exist; create it or write "
            "the page elsewhere"
        )
    try:
        parsed = [logic.parse_objective(text) for text in objectives]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--objective") from exc
    log = logic.load(log_path)
    if not log.records:
        raise click.ClickException(
            f"{log_path} holds no audit records ({log.skipped} other lines); point --log at a "
            "file the 'retrysafe.audit' logger writes to"
        )
    summary = logic.summarize(log, parsed, now)
    logic.render(summary, Console())
    if html_out is not None:
        try:
            html_out.write_text(logic.html_page(summary), encoding="utf-8")
        except OSError as exc:  # read-only directory, disk full...
            raise BadInput(f"--html: cannot write {str(html_out)!r}: {exc.strerror}") from exc
        click.echo(f"wrote {html_out}")

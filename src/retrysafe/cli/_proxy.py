"""``retrysafe proxy``: run the gateway (registered on the ``retrysafe`` click group)."""

from __future__ import annotations

import click

from retrysafe.cli._files import IDEMPOTENCY_STORE, check_sqlite
from retrysafe.errors import ConfigurationError


class ConfigError(click.ClickException):
    """Bad configuration: the message names the setting and where it came from."""

    exit_code = 2

    def format_message(self) -> str:
        return f"bad configuration: {self.message}"


@click.command("proxy")
@click.option("--upstream", metavar="URL", help="Where to forward requests [RETRYSAFE_UPSTREAM].")
@click.option(
    "--store", metavar="URL", help="Store URL [RETRYSAFE_STORE_URL; sqlite:///retrysafe.db]."
)
@click.option("--host", help="Address to listen on [RETRYSAFE_HOST; 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [RETRYSAFE_PORT; 8080].")
@click.option("--workers", type=int, help="Worker processes [RETRYSAFE_WORKERS; 1].")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file with settings and per-route policies [RETRYSAFE_CONFIG].",
)
@click.option(
    "--connect-timeout", help="Upstream connect timeout, e.g. 5s [RETRYSAFE_CONNECT_TIMEOUT]."
)
@click.option("--read-timeout", help="Upstream read timeout, e.g. 60s [RETRYSAFE_READ_TIMEOUT].")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
def proxy(
    upstream: str | None,
    store: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    config_file: str | None,
    connect_timeout: str | None,
    read_timeout: str | None,
    log_level: str,
) -> None:
    """Put idempotency keys in front of any HTTP API.

    Settings come from the --config file, then RETRYSAFE_* environment variables, then these
    flags (later wins). Health and metrics are served under /_retrysafe/.
    """
    from retrysafe.gateway import check_store, load_config, serve

    flags = {
        "upstream": upstream,
        "store": store,
        "host": host,
        "port": port,
        "workers": workers,
        "timeouts.connect": connect_timeout,
        "timeouts.read": read_timeout,
    }
    try:
        config = load_config(config_file, flags=flags)
    except ConfigurationError as exc:
        raise ConfigError(str(exc)) from exc
    try:  # a file of another kind (the DLQ's database, a text file) gains no table
        check_sqlite(config.store, IDEMPOTENCY_STORE, must_exist=False)
    except click.ClickException as exc:
        raise ConfigError(f"store: {exc.message}") from exc
    try:
        check_store(config)
    except ConfigurationError as exc:
        raise ConfigError(str(exc)) from exc
    click.echo(
        f"retrysafe gateway: http://{config.host}:{config.port} -> {config.upstream} "
        f"(store: {config.store.split(':')[0]}, workers: {config.workers})",
        err=True,
    )
    serve(config, log_level=log_level)

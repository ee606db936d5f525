"""The ``retrysafe`` click group, with every subcommand registered on it.

Each subcommand lives in its own module and imports what it needs when it runs, so ``--help``
stays fast and a command needs only its own extras.
"""

from __future__ import annotations

import click

from retrysafe import __version__
from retrysafe.cli._check import check
from retrysafe.cli._demo import demo
from retrysafe.cli._dlq import dlq
from retrysafe.cli._errors import Group
from retrysafe.cli._keys import keys
from retrysafe.cli._proxy import proxy
from retrysafe.cli._report import report
from retrysafe.cli._store import store


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retrysafe")
def cli() -> None:
    """retrysafe: idempotency keys done right, so retries are safe."""


cli.add_command(demo)  # `retrysafe demo`: an agent through a faulty network (docs/demo.md)
cli.add_command(keys)  # `retrysafe keys`: one key's record, purge, stats (README)
cli.add_command(store)  # `retrysafe store init`: a store's schema (docs/stores.md)
cli.add_command(proxy)  # `retrysafe proxy`: the gateway (docs/gateway.md)
cli.add_command(report)  # `retrysafe report`: audit log, SLOs (docs/observability.md)
cli.add_command(dlq)  # `retrysafe dlq`: the client's dead-letter queue (docs/client.md)
cli.add_command(check)  # `retrysafe check URL`: an endpoint's key conformance (docs/check.md)

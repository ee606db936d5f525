"""The ``retrysafe`` command (needs the ``[cli]`` extra): one module per command group.

:func:`main` is the console script. It names the missing extra before anything imports click,
then runs the group of :mod:`retrysafe.cli.commands`. The modules beside it: ``keys`` and
``store`` (the idempotency store), ``dlq`` (the client's dead-letter queue), ``proxy`` (the
gateway), ``report`` (the audit log), ``check`` (an endpoint's key conformance) and ``demo``;
the underscore modules are what they share (exit codes, option parsing, file checks).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from retrysafe._extras import require

    try:
        require("cli", "the retrysafe command", "click", "rich")
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(exc)
        return 2
    from retrysafe.cli.commands import cli

    return int(cli.main(args=argv, standalone_mode=True) or 0)


__all__ = ["main"]

"""The ``retrysafe`` command (needs the ``[cli]`` extra): one module per command group.

:func:`main` is the console script. It names the missing extra before anything imports click,
then runs the click group of ``_commands``. The modules beside it are private, one per command
group: ``_keys`` and ``_store`` (the idempotency store), ``_dlq`` (the client's dead-letter
queue), ``_proxy`` (the gateway), ``_report`` (the audit log), ``_check`` (an endpoint's key
conformance) and ``_demo``; ``_errors``, ``_args``, ``_files`` and ``_open_store`` are what they
share (exit codes, option parsing, file checks, opening a store).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from retrysafe._extras import require

    try:
        require("cli", "the retrysafe command", "click", "rich")
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(exc)
        return 2
    from retrysafe.cli._commands import cli

    return int(cli.main(args=argv, standalone_mode=True) or 0)


__all__ = ["main"]

"""How the ``retrysafe`` command fails: one line on stderr and a documented exit code.

Exit codes (README, "Command line"):

- 0: done.
- 1: the command ran and the answer is no: no record for the key, nothing stored at that
  path, a replay failed, a demo expectation failed.
- 2: what was asked cannot work: a bad option, URL, setting or path, or a file that is not
  the kind of store the command reads (click's own usage errors are 2 too).
- 3: a store or server could not be reached or used (refused, missing database, auth).

:class:`Group` is the click group class of the command: a :class:`RetrySafeError` a subcommand
did not handle itself still becomes one line with the right code, never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from retrysafe.errors import ConfigurationError, RetrySafeError, StoreUnavailable

EXIT_NO = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


class NotFound(click.ClickException):
    """Nothing there (exit 1)."""

    exit_code = EXIT_NO


class BadInput(click.ClickException):
    """A value or path that cannot work (exit 2); the message says what to change."""

    exit_code = EXIT_BAD_INPUT


class Unreachable(click.ClickException):
    """A store or server that cannot be reached or used (exit 3)."""

    exit_code = EXIT_UNREACHABLE


def cli_error(exc: RetrySafeError) -> click.ClickException:
    """The one-line CLI error for ``exc``; raise it ``from exc``."""
    if isinstance(exc, StoreUnavailable):
        return Unreachable(str(exc))
    if isinstance(exc, ConfigurationError):
        return BadInput(str(exc))
    return click.ClickException(str(exc))


class Group(click.Group):
    """A click group whose subcommands' unhandled :class:`RetrySafeError` is one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetrySafeError as exc:
            raise cli_error(exc) from exc

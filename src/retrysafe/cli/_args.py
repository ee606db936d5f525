"""Option values the ``retrysafe`` subcommands share the reading of."""

from __future__ import annotations

import click


def parse_header(text: str, option: str, example: str = "X-Api-Key: k_123") -> tuple[str, str]:
    """``'Name: value'`` as given to ``-H``/``--header``: the name and the value, stripped."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(
            f"{text!r} is not 'Name: value' (e.g. {example!r})", param_hint=option
        )
    return name.strip(), value.strip()

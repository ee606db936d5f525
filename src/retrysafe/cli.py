"""The ``retrysafe`` command. Subcommands import what they need lazily."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from retrysafe._extras import require

    try:
        require("cli", "the retrysafe command", "click", "rich")
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(exc)
        return 2
    from retrysafe._cli import cli

    return int(cli.main(args=argv, standalone_mode=True) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

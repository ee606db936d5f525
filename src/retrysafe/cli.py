"""The ``retrysafe`` command. Subcommands import what they need lazily."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import click  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        print("the retrysafe command needs the [cli] extra: pip install 'retrysafe[cli]'")
        return 2
    from retrysafe._cli import cli

    return int(cli.main(args=argv, standalone_mode=True) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

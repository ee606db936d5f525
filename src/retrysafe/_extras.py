"""Optional dependencies: importing a part without its extra says which extra to install.

Each part that needs a third-party package calls :func:`require` before importing it, so a user
who installed plain ``retrysafe`` gets ``pip install 'retrysafe[redis]'`` instead of a bare
``No module named 'redis'`` from deep inside the package.
"""

from __future__ import annotations

import importlib


def require(extra: str, part: str, *modules: str) -> None:
    """Import ``modules``; if one is missing, raise an ImportError naming ``extra``."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"{part} needs {module!r}, which the [{extra}] extra installs: "
                f"pip install 'retrysafe[{extra}]'",
                name=module,
            ) from exc

"""How a test starts a ``kit/*_child.py`` module in a child process: ``python -m kit.<name>``.

Under pytest ``tests/`` is on ``sys.path`` (tests/conftest.py sits at the top of a directory
without ``__init__.py``), but a child process gets only its environment: :func:`child_env`
puts ``tests/`` first on its ``PYTHONPATH``, so the child imports ``kit`` from any working
directory. The parent's ``PYTHONPATH`` entries follow, made absolute (``PYTHONPATH=src`` names
the source tree relative to where pytest was started). ``multiprocessing`` spawn children need
none of this: they get the parent's ``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
KIT = TESTS / "kit"


def child_argv(name: str, *args: str) -> list[str]:
    """``python -m kit.<name> ARGS``; ``name`` is a module of this package ending ``_child``."""
    assert name.endswith("_child"), f"kit/{name}.py: a child process's module ends in _child"
    assert (KIT / f"{name}.py").is_file(), f"no kit/{name}.py"
    return [sys.executable, "-m", f"kit.{name}", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, with ``tests/`` first on ``PYTHONPATH``."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = [str(TESTS), *(os.path.abspath(p) for p in inherited)]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(path)}

"""The layout's arrows (CONTRIBUTING.md) on the source: the core does no I/O, imports no framework.

As h11 does, a test scans the imports of the sans-I/O modules so they stay that way. The
scan reads every ``import`` statement anywhere in a module (functions included, so a lazy
import cannot sneak past), resolves relative imports, and compares module prefixes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import retrysafe

PACKAGE = Path(retrysafe.__file__).parent

CORE = [
    "decide",
    "records",
    "keys",
    "fingerprint",
    "policy",
    "problems",
    "outcomes",
    "scopes",
]
FORBIDDEN_IN_CORE = [
    "asyncio",
    "socket",
    "threading",
    "sqlite3",
    "redis",
    "psycopg",
    "psycopg_pool",
    "httpx",
    "starlette",
    "opentelemetry",
    "retrysafe.stores",
    "retrysafe.http",
    "retrysafe.engine",
]
FORBIDDEN_IN_STORES = ["retrysafe.http", "retrysafe.engine", "retrysafe.decide"]


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` imports (``from a import b`` yields ``a`` and ``a.b``).

    ``root`` is the directory holding the ``retrysafe`` package, to resolve relative imports.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        ):
            found.update(
                arg.value
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return found


def offending(found: set[str], forbidden: list[str]) -> list[str]:
    return sorted(
        name for name in found for bad in forbidden if name == bad or name.startswith(bad + ".")
    )


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_no_io_and_imports_no_framework(module: str) -> None:
    path = PACKAGE / f"{module}.py"
    assert path.is_file(), f"{path} is gone: update CORE in this test"
    assert offending(imports_of(path), FORBIDDEN_IN_CORE) == []


STORE_FILES = sorted((PACKAGE / "stores").glob("*.py"))


@pytest.mark.parametrize("path", STORE_FILES, ids=[p.name for p in STORE_FILES])
def test_stores_do_not_import_adapters_or_the_decision_core(path: Path) -> None:
    assert offending(imports_of(path), FORBIDDEN_IN_STORES) == []


def test_there_are_stores_to_check() -> None:
    assert {"memory.py", "sqlite.py", "base.py"} <= {p.name for p in STORE_FILES}


# The command line (and the demo it ships) sits on top: nothing in the library imports it.
LIBRARY_FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "cli")


@pytest.mark.parametrize(
    "path", LIBRARY_FILES, ids=[str(p.relative_to(PACKAGE)) for p in LIBRARY_FILES]
)
def test_the_library_never_imports_the_command_line(path: Path) -> None:
    assert offending(imports_of(path), ["retrysafe.cli"]) == []


def test_the_command_line_and_its_demo_are_left_out_of_the_library_files() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in LIBRARY_FILES}
    assert "engine.py" in names
    assert "client/transport.py" in names
    assert not {n for n in names if n.startswith("cli/")}
    assert (PACKAGE / "cli" / "demo" / "agentdemo.py").is_file()


# The scanner itself must catch what it is meant to catch.


@pytest.mark.parametrize(
    ("source", "where", "bad"),
    [
        ("import asyncio", "retrysafe/decide.py", "asyncio"),
        ("import asyncio.locks as l", "retrysafe/decide.py", "asyncio.locks"),
        ("from redis.asyncio import Redis", "retrysafe/decide.py", "redis.asyncio"),
        ("def f():\n    import sqlite3\n", "retrysafe/decide.py", "sqlite3"),
        ("from retrysafe.stores import memory", "retrysafe/decide.py", "retrysafe.stores"),
        (
            "from .stores.memory import MemoryStore",
            "retrysafe/decide.py",
            "retrysafe.stores.memory",
        ),
        ("from . import engine", "retrysafe/decide.py", "retrysafe.engine"),
        ("from ..http import asgi", "retrysafe/stores/memory.py", "retrysafe.http"),
        ("from ..decide import decide", "retrysafe/stores/memory.py", "retrysafe.decide"),
        ("importlib.import_module('httpx')", "retrysafe/decide.py", "httpx"),
    ],
)
def test_the_scanner_finds_forbidden_imports(
    tmp_path: Path, source: str, where: str, bad: str
) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    found = imports_of(path, root=tmp_path)
    assert offending(found, [*FORBIDDEN_IN_CORE, *FORBIDDEN_IN_STORES])
    assert any(name == bad or name.startswith(bad + ".") for name in found)


def test_the_scanner_allows_siblings_and_stdlib() -> None:
    found = imports_of(PACKAGE / "decide.py")
    assert "retrysafe.records" in found
    assert offending({"retrysafe.storesx", "asyncio_helpers", "hashlib"}, FORBIDDEN_IN_CORE) == []

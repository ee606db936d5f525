"""The layout's arrows (CONTRIBUTING.md) on the source.

As h11 does, tests scan the imports so the shape stays what CONTRIBUTING.md draws: the core does
no I/O and imports no framework; the stores import nothing above them; nothing below the
adapters imports an adapter; the import graph has no circles; and no module imports another
package's private (underscore) modules or names. The scan reads every ``import`` statement
anywhere in a module (functions included, so a lazy import cannot sneak past), resolves
relative imports, and compares module names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import retrysafe

PACKAGE = Path(retrysafe.__file__).parent

CORE = [
    "_decide",
    "_records",
    "_keys",
    "_fingerprint",
    "_policy",
    "_problems",
    "_outcomes",
    "_completion",
    "_scopes",
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
    "retrysafe._engine",
]
FORBIDDEN_IN_STORES = [
    "retrysafe.http",
    "retrysafe._engine",
    "retrysafe._decide",
    "retrysafe.atomic",
    "retrysafe.telemetry",
]


@dataclass(frozen=True)
class Import:
    """One import statement: ``module`` as written (relative ones resolved) and the ``names``
    taken from it (empty for ``import a.b``)."""

    module: str
    names: tuple[str, ...]
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:``: never runs


def imports_in(path: Path, root: Path = PACKAGE.parent) -> list[Import]:
    """Every import in ``path``, lazy ones in functions and ``importlib.import_module`` calls
    with a literal name included.

    ``root`` is the directory holding the ``retrysafe`` package, to resolve relative imports.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found: list[Import] = []
    for node in ast.walk(tree):
        hidden = id(node) in typing_only
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, (), node.lineno, hidden) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names = tuple(alias.name for alias in node.names)
            found.append(Import(module, names, node.lineno, hidden))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        ):
            found.extend(
                Import(arg.value, (), node.lineno, hidden)
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return found


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    found: set[str] = set()
    for imp in imports_in(path, root):
        found.add(imp.module)
        found.update(f"{imp.module}.{name}" for name in imp.names)
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
    assert {"memory.py", "sqlite.py", "_base.py"} <= {p.name for p in STORE_FILES}


# The command line (and the demo it ships) sits on top: nothing in the library imports it.
LIBRARY_FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "cli")


@pytest.mark.parametrize(
    "path", LIBRARY_FILES, ids=[str(p.relative_to(PACKAGE)) for p in LIBRARY_FILES]
)
def test_the_library_never_imports_the_command_line(path: Path) -> None:
    assert offending(imports_of(path), ["retrysafe.cli"]) == []


def test_the_command_line_and_its_demo_are_left_out_of_the_library_files() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in LIBRARY_FILES}
    assert "_engine.py" in names
    assert "client/_transport.py" in names
    assert not {n for n in names if n.startswith("cli/")}
    assert (PACKAGE / "cli" / "_demo" / "agentdemo.py").is_file()


# The scanner itself must catch what it is meant to catch.


@pytest.mark.parametrize(
    ("source", "where", "bad"),
    [
        ("import asyncio", "retrysafe/_decide.py", "asyncio"),
        ("import asyncio.locks as l", "retrysafe/_decide.py", "asyncio.locks"),
        ("from redis.asyncio import Redis", "retrysafe/_decide.py", "redis.asyncio"),
        ("def f():\n    import sqlite3\n", "retrysafe/_decide.py", "sqlite3"),
        ("from retrysafe.stores import memory", "retrysafe/_decide.py", "retrysafe.stores"),
        (
            "from .stores.memory import MemoryStore",
            "retrysafe/_decide.py",
            "retrysafe.stores.memory",
        ),
        ("from . import _engine", "retrysafe/_decide.py", "retrysafe._engine"),
        ("from ..http import asgi", "retrysafe/stores/memory.py", "retrysafe.http"),
        ("from .._decide import decide", "retrysafe/stores/memory.py", "retrysafe._decide"),
        ("importlib.import_module('httpx')", "retrysafe/_decide.py", "httpx"),
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
    found = imports_of(PACKAGE / "_decide.py")
    assert "retrysafe._records" in found
    assert offending({"retrysafe.storesx", "asyncio_helpers", "hashlib"}, FORBIDDEN_IN_CORE) == []


# -- The module graph: circles, private names, adapters ------------------------------------


@dataclass(frozen=True)
class Edge:
    """``importer`` imports module ``target``, or the name ``name`` from it."""

    importer: str
    target: str
    name: str | None
    line: int
    typing_only: bool


def modules_under(root: Path) -> dict[str, Path]:
    """Every module of the ``retrysafe`` package under ``root``, by dotted name (a package is
    its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for path in sorted((root / "retrysafe").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def package_of(module: str, modules: dict[str, Path]) -> str:
    """The package (directory) a module belongs to: itself for a package's ``__init__``."""
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def edges_under(root: Path) -> list[Edge]:
    """Every import from one retrysafe module of another, resolved to the module it runs.

    ``from a import b`` is an edge to the module ``a.b`` when there is one, else to ``a`` with
    the name ``b``; ``import a.b.c`` is an edge to the longest of ``a.b.c``, ``a.b``, ``a`` that
    is a module. The parent packages Python initialises on the way are not edges of their own:
    a package's ``__init__`` imports its modules, so counting them would make every package a
    circle.
    """
    modules = modules_under(root)
    edges: list[Edge] = []
    for importer, path in modules.items():
        for imp in imports_in(path, root):
            if not imp.module.startswith("retrysafe"):
                continue
            if not imp.names:
                parts = imp.module.split(".")
                prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
                target = next((m for m in prefixes if m in modules), None)
                if target is not None:
                    edges.append(Edge(importer, target, None, imp.line, imp.typing_only))
                continue
            for name in imp.names:
                if f"{imp.module}.{name}" in modules:
                    edge = Edge(importer, f"{imp.module}.{name}", None, imp.line, imp.typing_only)
                elif imp.module in modules:
                    edge = Edge(importer, imp.module, name, imp.line, imp.typing_only)
                else:
                    continue
                edges.append(edge)
    return edges


def find_circle(edges: list[Edge]) -> list[str] | None:
    """One circle of imports (``[a, b, a]``), or None when the graph has none.

    An import under ``if TYPE_CHECKING:`` is left out: it never runs, so it cannot leave a
    module half-initialised, and it names a type for the checker rather than using the
    module's code (a store's atomic unit is annotated with the store that builds it, while the
    store imports the unit's module to build one). Every other import counts, a lazy one in a
    function included: it runs, only later.
    """
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.typing_only and edge.importer != edge.target:
            graph.setdefault(edge.importer, set()).add(edge.target)
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack: list[Iterator[str]] = [iter(sorted(graph.get(start, ())))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif following in on_path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_crossings(edges: list[Edge], root: Path) -> dict[tuple[str, str], int]:
    """``(importer, imported) -> line`` for every import of something private to another
    package (a package is a directory of the source tree).

    A private module (``retrysafe/x/_y.py``) belongs to its package ``retrysafe.x``: modules of
    that package and of the packages inside it may import it (``retrysafe/_extras.py`` serves
    the whole library). A private name (``_current_key``) is a detail of its module, shared at
    most with the modules beside it: only modules of the same package may import it.
    """
    modules = modules_under(root)
    found: dict[tuple[str, str], int] = {}
    for edge in edges:
        home = package_of(edge.importer, modules)
        parts = edge.target.split(".")
        private_at = next((i for i, part in enumerate(parts) if is_private(part)), None)
        if private_at is not None:
            owner = ".".join(parts[:private_at])
            if home != owner and not home.startswith(owner + "."):
                found.setdefault((edge.importer, edge.target), edge.line)
        private_name = edge.name is not None and is_private(edge.name)
        if private_name and home != package_of(edge.target, modules):
            found.setdefault((edge.importer, f"{edge.target}.{edge.name}"), edge.line)
    return found


# The doors: they translate a world (HTTP, function calls, the gateway, the client, the command
# line, an ORM's transaction) into the engine's terms. Nothing below them may import them.
ADAPTER_PACKAGES = {"http", "gateway", "tools", "client", "check", "cli"}
ATOMIC_ADAPTERS = ("sqlalchemy", "_sqlalchemy_", "django")  # atomic/'s ORM glue


def is_adapter(module: str) -> bool:
    parts = module.split(".")[1:]
    if not parts:
        return False
    if parts[0] in ADAPTER_PACKAGES:
        return True
    return parts[0] == "atomic" and len(parts) > 1 and parts[1].startswith(ATOMIC_ADAPTERS)


ROOT = PACKAGE.parent
EDGES = edges_under(ROOT)


def test_the_import_graph_has_no_circles() -> None:
    circle = find_circle(EDGES)
    assert circle is None, "import circle: " + " -> ".join(circle or ())


def test_no_module_imports_another_packages_private_modules_or_names() -> None:
    crossings = private_crossings(EDGES, ROOT)
    wrong = [
        f"{importer} (line {line}) imports {imported}"
        for (importer, imported), line in sorted(crossings.items())
    ]
    assert wrong == [], "move the shared part where both may import it:\n" + "\n".join(wrong)


def test_nothing_below_the_adapters_imports_one() -> None:
    wrong = sorted(
        f"{edge.importer} (line {edge.line}) imports {edge.target}"
        for edge in EDGES
        if is_adapter(edge.target) and not is_adapter(edge.importer)
    )
    assert wrong == []


def test_the_graph_sees_the_layers() -> None:
    modules = modules_under(ROOT)
    adapters = {m for m in modules if is_adapter(m)}
    assert {"retrysafe.http._asgi", "retrysafe.client.dlq", "retrysafe.cli._demo"} <= adapters
    assert {"retrysafe.atomic.django", "retrysafe.atomic._sqlalchemy_pg"} <= adapters
    assert {"retrysafe._engine", "retrysafe.stores.sqlite", "retrysafe.atomic"}.isdisjoint(adapters)
    assert {"retrysafe.atomic._context", "retrysafe.telemetry._observe"}.isdisjoint(adapters)
    targets = {(e.importer, e.target) for e in EDGES}
    assert ("retrysafe.stores.sqlite", "retrysafe.stores._sqlite_atomic") in targets
    assert ("retrysafe.atomic._context", "retrysafe.stores.postgres") in targets  # lazy
    assert ("retrysafe._decide", "retrysafe._records") in targets


# The graph's scanner must catch what it is meant to catch.


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    for directory in {p.parent for p in root.rglob("*.py")}:
        (directory / "__init__.py").touch()
    return root


def test_the_circle_finder_reports_a_circle_through_a_lazy_import(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "retrysafe/a.py": "from retrysafe import b\n",
            "retrysafe/b.py": "from .c import f\n",
            "retrysafe/c.py": "def f():\n    from retrysafe.a import x\n",
        },
    )
    assert find_circle(edges_under(root)) == [
        "retrysafe.a",
        "retrysafe.b",
        "retrysafe.c",
        "retrysafe.a",
    ]


def test_the_circle_finder_leaves_out_type_checking_imports(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "retrysafe/store.py": "def unit():\n    from retrysafe.unit import Unit\n",
            "retrysafe/unit.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from retrysafe.store import Store\n"
            ),
            "retrysafe/pkg/mod.py": "from retrysafe.pkg import thing\n",
        },
    )
    (root / "retrysafe/pkg/__init__.py").write_text("from .mod import x\n", encoding="utf-8")
    edges = edges_under(root)
    assert find_circle(edges) == ["retrysafe.pkg", "retrysafe.pkg.mod", "retrysafe.pkg"]
    (root / "retrysafe/pkg/__init__.py").write_text("", encoding="utf-8")
    assert find_circle(edges_under(root)) is None


@pytest.mark.parametrize(
    ("source", "where", "crossing"),
    [
        ("from retrysafe.stores._errors import t", "http/asgi.py", "retrysafe.stores._errors"),
        ("from ..stores import _errors", "http/asgi.py", "retrysafe.stores._errors"),
        ("import retrysafe.stores._errors", "http/asgi.py", "retrysafe.stores._errors"),
        ("def f():\n    from ..atomic._run import x", "http/asgi.py", "retrysafe.atomic._run"),
        ("from retrysafe.context import _key", "http/asgi.py", "retrysafe.context._key"),
        ("from retrysafe.stores.pg import _opts", "client/dlq.py", "retrysafe.stores.pg._opts"),
        ("from retrysafe.stores import _hidden", "stores/sub/x.py", "retrysafe.stores._hidden"),
        ("from retrysafe.stores._errors import t", "client/x.py", "retrysafe.stores._errors"),
    ],
)
def test_the_scanner_finds_private_crossings(
    tmp_path: Path, source: str, where: str, crossing: str
) -> None:
    root = write_tree(
        tmp_path,
        {
            f"retrysafe/{where}": source + "\n",
            "retrysafe/stores/_errors.py": "",
            "retrysafe/stores/pg.py": "",
            "retrysafe/atomic/_run.py": "",
            "retrysafe/context.py": "",
        },
    )
    found = private_crossings(edges_under(root), root)
    assert {imported for _, imported in found} == {crossing}


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("from retrysafe.stores._errors import t", "stores/redis.py"),  # its own package
        ("from ._errors import _t", "stores/redis.py"),  # a private name beside it
        ("from retrysafe.stores._errors import t", "stores/sub/x.py"),  # a package inside
        ("from retrysafe._extras import require", "client/x.py"),  # the library's own
        ("from retrysafe import __version__", "client/x.py"),  # a dunder is not private
        ("from retrysafe.stores.pg import public", "client/x.py"),
        ("import os._private", "client/x.py"),  # not ours
    ],
)
def test_the_scanner_allows_what_a_package_shares(tmp_path: Path, source: str, where: str) -> None:
    root = write_tree(
        tmp_path,
        {
            f"retrysafe/{where}": source + "\n",
            "retrysafe/stores/_errors.py": "",
            "retrysafe/stores/pg.py": "",
            "retrysafe/_extras.py": "",
        },
    )
    assert private_crossings(edges_under(root), root) == {}

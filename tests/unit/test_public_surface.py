"""Every public name is importable from one obvious place: the ``__all__`` of one package.

A reader should never wonder whether ``retrysafe.MemoryStore`` and
``retrysafe.stores.MemoryStore`` are the same thing, or which one the docs mean. So each object
a public package (a package whose dotted path has no ``_private`` part) lists in ``__all__`` is
listed by no other public package, a package does not repeat what a public module of its own
lists (``retrysafe.stores`` and ``retrysafe.stores.memory``: every store is imported from its
module, alike with or without an extra; only the root gathers the exceptions ``errors`` lists,
the names the README sells), every listed name exists, and the names README.md and the docs
import come from where they are listed.

And a module's name says whether it may be imported (CONTRIBUTING.md, "Layout"): every public
module (no ``_private`` part in its dotted path, packages included) declares ``__all__``, and
README.md and the docs never import, document or run an underscore module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import retrysafe

ROOT = Path(__file__).resolve().parents[2]


def public_packages() -> list[ModuleType]:
    found = [retrysafe]
    for info in pkgutil.walk_packages(retrysafe.__path__, "retrysafe."):
        if not info.ispkg or any(part.startswith("_") for part in info.name.split(".")):
            continue
        if "migrations" in info.name:
            continue  # Django's: importing them needs a configured Django
        found.append(importlib.import_module(info.name))
    return found


def exports() -> dict[str, list[tuple[str, object]]]:
    """package name -> [(exported name, object)]."""
    table: dict[str, list[tuple[str, object]]] = {}
    for package in public_packages():
        names = getattr(package, "__all__", None)
        if names is None:
            continue
        table[package.__name__] = [(name, getattr(package, name)) for name in names]
    return table


def test_every_public_package_declares_its_names() -> None:
    missing = [p.__name__ for p in public_packages() if not hasattr(p, "__all__")]
    assert missing == [], f"public packages without __all__: {missing}"


def test_every_listed_name_exists() -> None:
    for package in public_packages():
        for name in getattr(package, "__all__", ()):
            assert hasattr(package, name), f"{package.__name__}.__all__ lists missing {name!r}"


def test_each_object_is_exported_from_one_package() -> None:
    owners: dict[int, list[str]] = {}
    objects: dict[int, object] = {}
    for package, names in exports().items():
        for name, obj in names:
            if isinstance(obj, str | int | float | frozenset | tuple):
                continue  # constants compare by value; two equal strings are not one name
            owners.setdefault(id(obj), []).append(f"{package}.{name}")
            objects[id(obj)] = obj
    doubles = sorted(places for places in owners.values() if len(places) > 1)
    assert doubles == [], f"exported from more than one package: {doubles}"


def test_no_package_repeats_what_its_public_modules_list() -> None:
    repeated: list[str] = []
    for name in public_modules():
        parent, _, leaf = name.rpartition(".")
        if parent in ("", "retrysafe") or ".migrations" in name or leaf == "apps":
            continue  # the root gathers what users catch; Django's modules are Django's
        package = importlib.import_module(parent)
        module = importlib.import_module(name)
        both = set(getattr(package, "__all__", ())) & set(getattr(module, "__all__", ()))
        # One object under one name; ``atomic.transaction`` and ``atomic.django.transaction``
        # are two functions that share a name, not one in two places.
        repeated += [
            f"{parent}.{n} and {name}.{n}"
            for n in sorted(both)
            if getattr(package, n) is getattr(module, n)
        ]
    assert repeated == [], f"one name, two public places (import it from the module): {repeated}"


IMPORT = re.compile(r"^\s*from (retrysafe[\w.]*) import \(?([\w, \n]+?)\)?\s*$", re.M)


def test_the_documents_import_each_name_from_where_it_is_listed() -> None:
    listed = {(package, name) for package, names in exports().items() for name, _ in names}
    owner_of = {name: package for package, name in listed}
    wrong: list[str] = []
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in documents:
        for module, names in IMPORT.findall(doc.read_text(encoding="utf-8")):
            for name in (n.strip() for n in names.split(",")):
                if not name or (not name[0].isupper() and name not in owner_of):
                    continue  # submodules (``from retrysafe import atomic``) and helpers
                if name in owner_of and (module, name) not in listed:
                    wrong.append(
                        f"{doc.name}: from {module} import {name} (listed in {owner_of[name]})"
                    )
    assert wrong == []


SOURCE = Path(retrysafe.__file__).parent


def public_modules() -> dict[str, Path]:
    """Every module whose dotted path has no ``_private`` part, by name (a package is its
    ``__init__.py``); read from the source, so the optional extras need not be installed."""
    found: dict[str, Path] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(part.startswith("_") for part in parts):
            found[".".join(parts)] = path
    return found


def declares_all(path: Path) -> bool:
    """Whether the module assigns ``__all__`` at its top level."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            return True
    return False


def test_every_public_module_declares_all() -> None:
    modules = public_modules()
    assert {"retrysafe", "retrysafe.errors", "retrysafe.stores.postgres"} <= set(modules)
    assert not [m for m in modules if m.startswith(("retrysafe.cli._demo", "retrysafe._engine"))]
    missing = sorted(name for name, path in modules.items() if not declares_all(path))
    assert missing == [], f"public modules without __all__ (or make them private): {missing}"


def test_the_all_check_tells_a_declaration_from_a_mention(tmp_path: Path) -> None:
    declared = tmp_path / "declared.py"
    declared.write_text("__all__: list[str] = []\n", encoding="utf-8")
    mentioned = tmp_path / "mentioned.py"
    mentioned.write_text('"""No __all__ = [] here."""\n\n\ndef f():\n    __all__ = 1\n')
    assert declares_all(declared)
    assert not declares_all(mentioned)


# A dotted module path with an underscore part (``retrysafe._engine``,
# ``retrysafe.gateway._app:app_from_env``), as a document would import it, render it
# (``::: ...``) or run it (``python -m ...``). File paths (``src/retrysafe/_engine.py``) say
# where code lives and stay allowed.
PRIVATE_PATH = re.compile(r"(?<![\w/])retrysafe(?:\.[A-Za-z]\w*)*\._[a-z]\w*")


def private_paths(text: str) -> list[str]:
    return PRIVATE_PATH.findall(text)


def test_the_documents_name_no_private_module() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    wrong = [
        f"{doc.relative_to(ROOT)}: {found}"
        for doc in documents
        for found in private_paths(doc.read_text(encoding="utf-8"))
    ]
    assert wrong == [], "name it as its package exports it:\n" + "\n".join(wrong)


def test_the_private_path_check_catches_imports_directives_and_commands() -> None:
    text = (
        "from retrysafe._engine import x\n"
        "import retrysafe.stores._base\n"
        "::: retrysafe.gateway._serve.uvicorn_config\n"
        "python -m retrysafe.cli._demo.agent\n"
        "from retrysafe.stores import SQLiteStore  # src/retrysafe/_engine.py\n"
        "retrysafe.__version__, retrysafe.lease_lost(), retrysafe.stores.url.redacted_url\n"
    )
    assert private_paths(text) == [
        "retrysafe._engine",
        "retrysafe.stores._base",
        "retrysafe.gateway._serve",
        "retrysafe.cli._demo",
    ]

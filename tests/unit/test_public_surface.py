"""Every public name is importable from one obvious place: the ``__all__`` of one package.

A reader should never wonder whether ``retrysafe.MemoryStore`` and
``retrysafe.stores.MemoryStore`` are the same thing, or which one the docs mean. So each object
a public package (a package whose dotted path has no ``_private`` part) lists in ``__all__`` is
listed by no other public package, every listed name exists, and the names README.md and the
docs import come from where they are listed.
"""

from __future__ import annotations

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
        if info.name.startswith("retrysafe.cli.demo") or "migrations" in info.name:
            continue  # the demo is the CLI's, and Django migrations are Django's
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

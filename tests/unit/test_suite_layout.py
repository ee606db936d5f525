"""The test suite's layout (CONTRIBUTING.md, "Test layout and kits"): one home for test kits.

A module under tests/ is a test (``test_*.py``), a ``conftest.py``, a package's ``__init__.py``
- or a kit, and every kit lives in tests/kit/, named for what it holds: ``<area>_<what>``, and
``<area>_<what>_child`` for code that runs in a child process (``kit.children.child_argv``
refuses any other). Helpers beside the tests that use them, each named its own way, are what
issue 16 gathered here.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
KIT = TESTS / "kit"

# The kit's names say what a module holds; these say only that it helps: the old forms.
NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
HELPER_WORDS = ("kit", "support", "helper", "util", "worker", "common")


def is_test_or_package(path: Path) -> bool:
    name = path.name
    return (
        name in ("conftest.py", "__init__.py")
        or name.startswith("test_")
        or name.endswith("_test.py")
    )


def modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_helper_module_lives_in_kit() -> None:
    stray = [
        path.relative_to(TESTS).as_posix()
        for path in modules()
        if not is_test_or_package(path) and KIT not in path.parents
    ]
    assert not stray, (
        f"helper modules outside tests/kit/: {stray}. A module under tests/ that is not a "
        "test_*.py, conftest.py or __init__.py is a kit: move it to tests/kit/ as "
        "<area>_<what>.py (<area>_<what>_child.py if it runs in a child process) and import it "
        "as `from kit.<name> import ...` (CONTRIBUTING.md, 'Test layout and kits')."
    )


def test_kit_modules_are_named_for_what_they_hold() -> None:
    kits = [p for p in modules() if KIT in p.parents and p.name != "__init__.py"]
    assert kits, "tests/kit/ has no modules"
    misnamed = []
    for path in kits:
        stem = path.relative_to(KIT).with_suffix("").as_posix().split("/")[0]
        if not NAME.fullmatch(stem) or any(word in stem for word in HELPER_WORDS):
            misnamed.append(path.relative_to(TESTS).as_posix())
    assert not misnamed, (
        f"{misnamed}: a kit module is named <area>_<what> in lower case (atomic_db, "
        f"client_servers), <area>_<what>_child if it runs in a child process; not _private, "
        f"and with none of {HELPER_WORDS} (the directory already says it is a helper)."
    )


# A test module importing another: ``from .test_x import``, ``from tests.x import``.
CROSS_IMPORT = re.compile(r"^\s*from\s+(\.+test_\w*|tests\.[\w.]+|test_\w+)\s+import", re.M)


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"{path.relative_to(TESTS).as_posix()}: {match.group(0).strip()}"
        for path in modules()
        for match in CROSS_IMPORT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        f"imports between test modules: {offenders}. What two test modules share is a kit: "
        "move it to tests/kit/ and import it as `from kit.<name> import ...`."
    )

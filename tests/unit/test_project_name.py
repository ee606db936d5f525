"""The project's old name is gone from code, docs, defaults and tests (CHANGELOG.md's rename note
is the one place it may stand): another product ships a module of that name, so a leftover would
be a default or a document that points at someone else's software."""

from __future__ import annotations

import subprocess
from pathlib import Path

import retrysafe
from retrysafe._policy import Policy

ROOT = Path(__file__).resolve().parents[2]
OLD_NAME = "once" + "only"  # spelled in two parts so this file does not match itself
ALLOWED = {"CHANGELOG.md"}


def tracked_files() -> list[Path]:
    if (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    skip = {".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
    ]


def test_the_old_name_appears_only_in_the_changelog() -> None:
    offenders = []
    for path in tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if OLD_NAME in rel.lower():
            offenders.append(f"{rel} (path)")
        if rel in ALLOWED or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace").lower()
        for number, line in enumerate(text.splitlines(), 1):
            if OLD_NAME in line.replace("-", "").replace("_", ""):
                offenders.append(f"{rel}:{number}")
    assert not offenders, f"the old project name is still here: {offenders[:20]}"
    assert OLD_NAME in (ROOT / "CHANGELOG.md").read_text().lower()  # the rename is recorded


def test_defaults_carry_the_new_name() -> None:
    assert Policy().problem_base_uri == "urn:retrysafe:problem:"
    assert retrysafe.__name__ == "retrysafe"

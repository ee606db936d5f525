"""Find the fenced code blocks of README.md and docs/*.md, and what each one asks of the tests.

The convention (CONTRIBUTING.md, "Code blocks in the docs"):

- Every fence names its language. ``python`` blocks are executed; ``sh`` is a listing of
  commands (every line is one, ``\\`` or an indented line continues it, ``#`` starts a
  comment); ``console`` is a transcript (``$ `` starts a command, the other lines are its
  output); ``text``, ``json``, ``toml``, ``sql`` and ``promql`` are data or output and are not
  executed.
- A block that cannot run as printed carries ``<!-- not-run: why -->`` on the line before its
  fence. The reason is required.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = frozenset({"python", "sh", "console"})
DATA_LANGUAGES = frozenset({"text", "json", "toml", "sql", "promql"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*not-run\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text, and its not-run reason if any."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # None: runs; "": marked without a reason (an error)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one page, in order. An unclosed fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = opening["indent"]
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != f"{indent}```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.relative_to(ROOT)}:{i + 1}: the ``` fence is never closed")
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=opening["lang"],
                text="\n".join(body) + "\n",
                not_run=None if marker is None else (marker["reason"] or ""),
            )
        )
        i = end + 1
    return found


@dataclass(frozen=True)
class Command:
    """One shell command of a block, with the output a transcript prints under it."""

    line: str  # continuations joined, the trailing comment dropped
    output: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line)


def commands_of(block: Block) -> list[Command]:
    """The commands of an ``sh`` listing or a ``console`` transcript."""
    commands: list[Command] = []
    pending = ""
    output: list[str] = []
    transcript = block.lang == "console"

    def flush() -> None:
        nonlocal pending, output
        if pending:
            commands.append(Command(_drop_comment(pending), tuple(output)))
        pending, output = "", []

    continuing = False
    for raw in block.text.splitlines():
        if continuing:
            pending += " " + raw.strip().removesuffix("\\").strip()
            continuing = raw.rstrip().endswith("\\")
            continue
        if transcript and not raw.startswith("$ "):
            output.append(raw)
            continue
        stripped = raw.removeprefix("$ ").strip()
        if not stripped or stripped.startswith("#"):
            continue
        if pending and raw[:1].isspace():  # a synopsis wraps its options on indented lines
            pending += " " + stripped
            continue
        flush()
        pending = stripped.removesuffix("\\").strip()
        continuing = stripped.endswith("\\")
    flush()
    return commands


def _drop_comment(line: str) -> str:
    """``cmd --x 1   # why`` -> ``cmd --x 1`` (a ``#`` inside quotes is kept)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    kept = list(lexer)
    # Re-quote each word so that the line can be split again with the same meaning.
    return shlex.join(kept) if kept else ""

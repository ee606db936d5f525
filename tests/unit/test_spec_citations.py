"""Every rule the code, the tests and the docs cite resolves to a rule of docs/spec.md.

A citation is ``SPEC`` followed by rule numbers: ``SPEC 13a``, ``SPEC rule 18``, ``SPEC rules
7, 12-15``, ``SPEC 20–27``; ``SPEC section 2`` names a section. docs/spec.md marks each rule with
``<a id="rule-N">`` and each section with ``<a id="section-N">``. The project's contract lives
in the repository: no file may send a reader to a ``SPEC.md``, ``DESIGN.md`` or ``STYLE`` rule
that is not in it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "spec.md"
SCANNED = [ROOT / "src", ROOT / "tests", ROOT / "docs", ROOT / "bench"]
SCANNED_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
SUFFIXES = {".py", ".md", ".toml", ".txt", ".lua", ".html"}

NUMBER = r"\d+[a-z]?"
# "SPEC 13a", "SPEC rule 18", "SPEC rules 7, 12-15", "SPEC 20–27", "SPEC section 2".
CITATION = re.compile(
    rf"\bSPEC(?P<md>\.md)?\s+(?:(?P<section>sections?)\s+|rules?\s+)?"
    rf"(?P<list>{NUMBER}(?:\s*(?:[-–,]|and|or)\s*{NUMBER}\b)*)"
)
RANGE = re.compile(rf"({NUMBER})\s*[-–]\s*({NUMBER})")
# Documents that are not part of the repository (an early design brief): no pointers to them.
ELSEWHERE = re.compile(r"\bSPEC\.md\b|\bDESIGN(?:\.md)?\b|\bSTYLE\s+\d+")


def sources() -> list[Path]:
    found = [p for p in SCANNED_FILES if p.exists()]
    for folder in SCANNED:
        found += [p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return sorted(p for p in found if p != Path(__file__).resolve() and ".venv" not in p.parts)


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([a-z0-9-]+)"></a>', SPEC.read_text()))


def cited(text: str) -> list[tuple[str, str]]:
    """(anchor, citation) for each rule or section a text cites."""
    out = []
    for match in CITATION.finditer(text):
        kind = "section" if match["section"] else "rule"
        for part in re.split(r"\s*(?:,|and|or)\s*", match["list"]):
            if span := RANGE.fullmatch(part):
                first, last = int(span[1]), int(span[2])
                numbers = [str(n) for n in range(first, last + 1)] if first < last else []
                out += [(f"{kind}-{n}", match[0]) for n in numbers or [part]]
            else:
                out.append((f"{kind}-{part}", match[0]))
    return out


def test_the_grammar() -> None:
    assert cited("SPEC 13a") == [("rule-13a", "SPEC 13a")]
    assert [a for a, _ in cited("(SPEC rules 7, 12-14)")] == [
        "rule-7",
        "rule-12",
        "rule-13",
        "rule-14",
    ]
    assert [a for a, _ in cited("SPEC 19, 29.")] == ["rule-19", "rule-29"]
    assert [a for a, _ in cited("SPEC section 2")] == ["section-2"]
    assert [a for a, _ in cited("SPEC 31–33")] == ["rule-31", "rule-32", "rule-33"]
    assert [a for a, _ in cited("SPEC 9, answered 422")] == ["rule-9"]


def test_the_spec_marks_every_rule_once() -> None:
    ids = re.findall(r'<a id="([a-z0-9-]+)"></a>', SPEC.read_text())
    assert len(ids) == len(set(ids))
    assert {f"rule-{n}" for n in range(1, 42)} | {"rule-13a"} <= set(ids)


def test_every_citation_resolves() -> None:
    known = anchors()
    broken = []
    seen = 0
    for path in sources():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for anchor, citation in cited(line):
                seen += 1
                if anchor not in known:
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {citation!r} -> #{anchor}")
    assert seen > 100  # the scan found the citations (a broken pattern would find none)
    assert not broken, "citations docs/spec.md does not have:\n" + "\n".join(broken)


def test_no_reference_to_documents_outside_the_repository() -> None:
    stale = []
    for path in sources():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if match := ELSEWHERE.search(line):
                stale.append(f"{path.relative_to(ROOT)}:{number}: {match[0]!r}")
    assert not stale, "point these at docs/spec.md or CONTRIBUTING.md:\n" + "\n".join(stale)


def test_every_rule_names_tests_that_exist() -> None:
    text = SPEC.read_text()
    rules = re.split(r'<a id="rule-', text)[1:]
    assert len(rules) >= 42
    for rule in rules:
        number = rule.partition('"')[0]
        named = re.findall(r"`(tests/[\w/]+\.py)`", rule.partition("Checked by:")[2])
        assert named, f"rule {number} names no test module"
        missing = [name for name in named if not (ROOT / name).is_file()]
        assert not missing, f"rule {number} names test modules that do not exist: {missing}"

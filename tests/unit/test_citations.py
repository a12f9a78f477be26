"""Every citation in the repository can be followed from a clone (docs/development.md
"Citations"): no research notes from outside the repository, and every
``docs/<file>.md "Section"`` names a file and a heading that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# notes that live outside the repository; cited only as a docs/ path (docs/engine.md is ours)
FOREIGN = re.compile(r"(?<![\w/])(?:compat|spop|harness|style)\.md|\.\./shared")
# data, not a citation: the CRS runner reads the CRS test files from ../shared at run time
EXEMPT = {
    ("tests/crs/loader.py", "``../shared/crs-tests/v3.3.4``"),
    ("tests/crs/run.py", "or ../shared/crs-tests/v3.3.4"),
    ("tests/crs/crs_setup.py", "in ../shared beside the project"),
}
# a docs/ citation with a section name; the name may continue on the next comment line
DOCS_CITATION = re.compile(
    r'docs/([\w.-]+\.md),? "([^"\n]+(?:\n[ \t]*(?:#|\*|//)?[ \t]*[^"\n]+)?)"'
)


def repository_files() -> list[str]:
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    own = "tests/unit/test_citations.py"  # its examples are citations on purpose
    return [n for n in names if not n.startswith("docs/") and n != own and (ROOT / n).is_file()]


def read_text(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError):
        return None


def headings(doc: Path) -> list[str]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    return [line.lstrip("#").strip() for line in lines if re.match(r"#{1,6} ", line)]


def foreign_citations(name: str, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if FOREIGN.search(line) and not any(
            name == path and marker in line for path, marker in EXEMPT
        ):
            found.append(f"{name}:{number}: {line.strip()}")
    return found


def broken_sections(name: str, text: str) -> list[str]:
    broken = []
    for match in DOCS_CITATION.finditer(text):
        doc = ROOT / "docs" / match.group(1)
        section = re.sub(r"\s*\n[ \t]*(?:#|\*|//)?[ \t]*", " ", match.group(2)).strip()
        line = text.count("\n", 0, match.start()) + 1
        if not doc.is_file():
            broken.append(f"{name}:{line}: no file docs/{match.group(1)}")
        elif not any(re.match(re.escape(section) + r"(\W|$)", h) for h in headings(doc)):
            broken.append(f'{name}:{line}: docs/{match.group(1)} has no heading "{section}"')
    return broken


def test_no_citation_of_notes_outside_the_repository() -> None:
    offenders = []
    for name in repository_files():
        text = read_text(name)
        if text is not None:
            offenders += foreign_citations(name, text)
    assert offenders == []


def test_every_cited_docs_section_exists() -> None:
    offenders = []
    for name in [*repository_files(), "docs/development.md"]:
        text = read_text(name)
        if text is not None:
            offenders += broken_sections(name, text)
    assert offenders == []


def test_the_checks_can_fail() -> None:
    assert foreign_citations("x.py", "# see spop.md §2.1\n# ../shared/docs/compat.md") == [
        "x.py:1: # see spop.md §2.1",
        "x.py:2: # ../shared/docs/compat.md",
    ]
    assert foreign_citations("tests/crs/run.py", "x or ../shared/crs-tests/v3.3.4") == []
    assert foreign_citations("x.py", "# docs/engine.md, docs/protocol.md") == []
    assert broken_sections("x.py", '# docs/protocol.md "Varints"\n') == []
    assert broken_sections("x.py", '# docs/protocol.md "One frame, one\n# write"') == []
    assert broken_sections("x.py", '# docs/protocol.md "No such part"') == [
        'x.py:1: docs/protocol.md has no heading "No such part"'
    ]
    assert broken_sections("x.py", '# docs/nothing.md "Varints"') == [
        "x.py:1: no file docs/nothing.md"
    ]

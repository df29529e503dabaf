"""The README and the behaviour agree: what messages cite exists, what it shows works."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# How taskd's messages cite the README: (see README, 'Heading').
CITATION = re.compile(r"README, '([^']+)'")


def headings() -> set[str]:
    """Every Markdown heading of the README, without its #s (code blocks left out)."""
    found, in_code = set(), False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(line.lstrip("#").strip())
    return found


def test_every_readme_citation_in_the_code_names_a_real_heading() -> None:
    """A message that says "see README, 'X'" points to a heading X that exists."""
    known = headings()
    citations = {
        (path.relative_to(REPO).as_posix(), title)
        for path in sorted((REPO / "taskd").rglob("*.py"))
        for title in CITATION.findall(path.read_text(encoding="utf-8"))
    }
    assert citations, "no citation found: has the message format changed?"
    missing = sorted((path, title) for path, title in citations if title not in known)
    assert missing == []

"""The README and the behaviour agree: what messages cite exists, what it shows works."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from taskd.schedule import parse_schedule

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


def test_readme_cron_day_rule_is_what_the_engine_does() -> None:
    """The README's examples of cron's day-of-month/day-of-week rule hold (issue 9.7)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "`0 12 1-31 * 1` fires every day" in text
    assert "`0 0 */2 * 1` fires on the odd days that are Mondays" in text
    thursday = datetime(2026, 1, 1, tzinfo=UTC)
    every_day = parse_schedule({"cron": "0 12 1-31 * 1"})
    assert every_day.next_after(thursday) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    odd_mondays = parse_schedule({"cron": "0 0 */2 * 1"})
    # Monday the 5th, not Saturday the 3rd (odd) nor Monday the 12th.
    assert odd_mondays.next_after(thursday) == datetime(2026, 1, 5, tzinfo=UTC)


def test_readme_zone_names_in_any_case() -> None:
    """README: zone names in any case, kept in the canonical spelling (issue 9.8)."""
    assert "`europe/berlin` is kept as `Europe/Berlin`" in README.read_text(encoding="utf-8")
    schedule = parse_schedule({"hours": [2], "timezone": "europe/berlin"})
    assert schedule.to_json()["timezone"] == "Europe/Berlin"

"""The task-definition validator: schedules without their own zone keep "no zone" in storage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from taskd.errors import ValidationError
from taskd.schedule import CalendarSchedule, parse_schedules
from taskd.taskspec import task_header_lines, task_paths, validate_task_spec

AFTER = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# 02:30 every day: 00:30 UTC in Berlin (CEST), 06:30 UTC in New York (EDT).
AT_0230 = {"hours": [2], "minutes": [30]}


def spec_json(schedules: list[dict[str, Any]], default_timezone: str) -> dict[str, Any]:
    """The stored JSON of a task with `schedules`, validated with `default_timezone`."""
    raw = {"name": "t", "task_module": "shell", "schedules": schedules}
    return validate_task_spec(raw, path="", default_timezone=default_timezone).to_json()


@pytest.mark.parametrize("schedule", [AT_0230, {"cron": "30 2 * * *"}], ids=["calendar", "cron"])
def test_schedule_without_zone_is_stored_without_one(schedule: dict[str, Any]) -> None:
    """A schedule that names no zone is evaluated in the default, but stored without it."""
    spec = validate_task_spec(
        {"name": "t", "task_module": "shell", "schedules": [schedule]},
        path="",
        default_timezone="Europe/Berlin",
    )
    assert spec.schedules.next_after(AFTER) == datetime(2026, 6, 2, 0, 30, tzinfo=UTC)
    stored = spec.to_json()["schedules"]
    assert stored == [schedule]
    assert "timezone" not in stored[0]


@pytest.mark.parametrize("schedule", [AT_0230, {"cron": "30 2 * * *"}], ids=["calendar", "cron"])
def test_stored_schedule_follows_a_new_default_zone(schedule: dict[str, Any]) -> None:
    """Stored under default zone A, re-parsed with default zone B: it fires in B (a reload)."""
    stored = spec_json([schedule], "Europe/Berlin")["schedules"]
    reparsed = parse_schedules(stored, default_timezone="America/New_York")
    assert reparsed.next_after(AFTER) == datetime(2026, 6, 2, 6, 30, tzinfo=UTC)
    only = reparsed.schedules[0]
    assert isinstance(only, CalendarSchedule)
    assert not only.timezone_given
    assert str(only.timezone) == "America/New_York"


def test_explicit_zone_survives_a_round_trip() -> None:
    """A schedule's own zone is stored and wins over any default, then and after a reload."""
    stored = spec_json([{**AT_0230, "timezone": "Europe/Berlin"}], "UTC")["schedules"]
    assert stored == [{"hours": [2], "minutes": [30], "timezone": "Europe/Berlin"}]
    reparsed = parse_schedules(stored, default_timezone="America/New_York")
    assert reparsed.next_after(AFTER) == datetime(2026, 6, 2, 0, 30, tzinfo=UTC)
    only = reparsed.schedules[0]
    assert isinstance(only, CalendarSchedule)
    assert only.timezone_given
    assert reparsed.to_json() == stored


def test_round_trip_through_the_validator_keeps_the_spec() -> None:
    """to_json() fed back to the validator, under another default, gives the same JSON."""
    first = spec_json([AT_0230, {"cron": "0 3 * * 0", "timezone": "UTC"}], "Europe/Berlin")
    again = validate_task_spec(first, path="", default_timezone="Asia/Tokyo").to_json()
    assert again == first


def test_task_paths_name_by_name_or_index_and_refuse_reused_names() -> None:
    """Unique valid names address a task; a reused or invalid one falls back on its
    position, counted from 1, and its line when known (issue 9.10)."""
    items: list[Any] = [{"name": "a"}, {"name": "b"}, {"name": "b"}, {"name": "no space"}, 3]
    paths, errors = task_paths(items, "task")
    assert paths == ["task[a]", "task #2", "task #3", "task #4", "task #5"]
    assert [str(e) for e in errors] == [
        "task #3.name: duplicate task name 'b', also used by task #2"
    ]
    paths, errors = task_paths(items, "task", lines=[1, 5, 9, 13, 17])
    assert paths[:3] == ["task[a]", "task #2 (line 5)", "task #3 (line 9)"]
    assert [str(e) for e in errors] == [
        "task #3 (line 9).name: duplicate task name 'b', also used by task #2 (line 5)"
    ]
    # Lines that do not fit the items are not used.
    assert task_paths(items, "task", lines=[1, 2])[0][1] == "task #2"


def test_task_header_lines() -> None:
    """The `[[task]]` headers' lines, or None when they do not account for every task."""
    text = '[daemon]\n\n[[task]]\nname = "a"\n  [[task]] # indented\n[[task.x]]\n'
    assert task_header_lines(text, 2) == [3, 5]
    assert task_header_lines(text, 3) is None
    assert task_header_lines('s = """\n[[task]]\n"""\n', 0) is None


def test_unknown_field_suggests_the_close_name() -> None:
    """A typo in a task's fields is refused with a suggestion."""
    with pytest.raises(ValidationError) as info:
        validate_task_spec(
            {"name": "t", "task_module": "shell", "schedule": []}, path="", default_timezone="UTC"
        )
    [error] = info.value.errors
    assert error.path == "schedule"
    assert error.reason.startswith("unknown field; did you mean 'schedules'? expected one of: ")

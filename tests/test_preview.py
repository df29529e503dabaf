"""The schedule preview (taskd.preview): fire times with their schedule, local time and DST
mark. Expected instants are worked out by hand from the zones' rules: Berlin springs forward
on 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST) and falls back on 2026-10-25 at 01:00
UTC (03:00 CEST -> 02:00 CET); New York springs forward on 2026-03-08 at 07:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskd.errors import ValidationError
from taskd.preview import DstMark, dst_mark, next_runs, parse_preview_request
from taskd.schedule import parse_schedule, parse_schedules

BERLIN = "Europe/Berlin"
UTC_ZONE = ZoneInfo("UTC")


def z(text: str) -> datetime:
    """A UTC instant from 'YYYY-MM-DDTHH:MM' (the 'Z' is implied)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rows(raw: list[dict[str, Any]], after: str, count: int) -> list[tuple[str, str, int, Any]]:
    runs = next_runs(parse_schedules(raw), z(after), count, timezone=UTC_ZONE)
    return [(r.to_json()["at"], r.to_json()["local"], r.schedule, r.to_json()["dst"]) for r in runs]


def test_a_gap_slot_shifted_to_the_end_of_the_gap_is_marked() -> None:
    """02:30 on the spring-forward night does not exist: it fires at 03:00 CEST, marked."""
    assert rows([{"hours": [2], "minutes": [30], "timezone": BERLIN}], "2026-03-28T00:00", 3) == [
        ("2026-03-28T01:30:00Z", "2026-03-28T02:30:00+01:00", 0, None),
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", 0, "gap_shifted"),
        ("2026-03-30T00:30:00Z", "2026-03-30T02:30:00+02:00", 0, None),
    ]


def test_a_real_slot_right_after_a_gap_is_not_marked_when_the_gap_held_none() -> None:
    """03:00 exists on the spring-forward night; the gap held no slot of the schedule."""
    assert rows([{"hours": [3], "minutes": [0], "timezone": BERLIN}], "2026-03-29T00:00", 1) == [
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", 0, None),
    ]


def test_a_skipping_schedule_has_no_shifted_slot() -> None:
    """Hours unrestricted: the gap's slots do not occur (dst_gap skip), nothing is moved."""
    got = rows([{"minutes": [0], "timezone": BERLIN}], "2026-03-29T00:30", 2)
    assert got == [
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", 0, None),
        ("2026-03-29T02:00:00Z", "2026-03-29T04:00:00+02:00", 0, None),
    ]


def test_the_fall_back_hour_marks_both_occurrences() -> None:
    """Hours unrestricted: 02:30 fires twice on the fall-back night, first and second."""
    got = rows([{"minutes": [30], "timezone": BERLIN}], "2026-10-25T00:00", 3)
    assert got == [
        ("2026-10-25T00:30:00Z", "2026-10-25T02:30:00+02:00", 0, "fold_first"),
        ("2026-10-25T01:30:00Z", "2026-10-25T02:30:00+01:00", 0, "fold_second"),
        ("2026-10-25T02:30:00Z", "2026-10-25T03:30:00+01:00", 0, None),
    ]


def test_an_hour_restricted_schedule_fires_once_in_the_fold_marked_first() -> None:
    """dst_fold first (the default with hours): one run, whose wall time occurs twice."""
    got = rows([{"hours": [2], "minutes": [30], "timezone": BERLIN}], "2026-10-24T12:00", 2)
    assert got == [
        ("2026-10-25T00:30:00Z", "2026-10-25T02:30:00+02:00", 0, "fold_first"),
        ("2026-10-26T01:30:00Z", "2026-10-26T02:30:00+01:00", 0, None),
    ]


def test_dst_fold_last_fires_the_second_occurrence() -> None:
    """dst_fold last: the run is the second 02:30."""
    raw = [{"hours": [2], "minutes": [30], "timezone": BERLIN, "dst_fold": "last"}]
    assert rows(raw, "2026-10-24T12:00", 1) == [
        ("2026-10-25T01:30:00Z", "2026-10-25T02:30:00+01:00", 0, "fold_second"),
    ]


def test_schedules_merge_and_each_run_names_its_schedule() -> None:
    """Two schedules: runs in time order, an instant both yield listed once (lowest index);
    an interval's local time is shown in the preview's zone and never marked."""
    raw = [
        {"hours": [1], "minutes": [0], "timezone": "UTC"},
        {"interval_sec": 1800, "start_at": "2026-01-01T00:00:00Z"},
    ]
    got = next_runs(parse_schedules(raw), z("2026-01-01T00:10"), 4, timezone=ZoneInfo(BERLIN))
    assert [(r.to_json()["at"], r.schedule, r.dst) for r in got] == [
        ("2026-01-01T00:30:00Z", 1, None),
        ("2026-01-01T01:00:00Z", 0, None),
        ("2026-01-01T01:30:00Z", 1, None),
        ("2026-01-01T02:00:00Z", 1, None),
    ]
    assert got[0].to_json()["local"] == "2026-01-01T01:30:00+01:00"


def test_a_schedule_that_stops_firing_gives_fewer_runs() -> None:
    """Day 30 skips February; the last slots before year 10000 end the list early."""
    assert rows([{"days_of_month": [30], "hours": [0], "minutes": [0]}], "2026-01-01", 2) == [
        ("2026-01-30T00:00:00Z", "2026-01-30T00:00:00+00:00", 0, None),
        ("2026-03-30T00:00:00Z", "2026-03-30T00:00:00+00:00", 0, None),
    ]
    hourly = parse_schedules([{"minutes": [0]}])
    last = next_runs(hourly, z("9999-12-31T21:30"), 5, timezone=UTC_ZONE)
    assert [r.to_json()["at"] for r in last] == ["9999-12-31T22:00:00Z", "9999-12-31T23:00:00Z"]


def test_dst_mark_of_an_interval_is_none() -> None:
    """Intervals count real seconds: never moved by the wall clock."""
    schedule = parse_schedule({"interval_sec": 60})
    assert dst_mark(schedule, z("2026-10-25T00:30")) is None


def test_new_york_gap_shift() -> None:
    """New York 2026-03-08: 02:15 EST does not exist; it fires at 03:00 EDT (07:00 UTC)."""
    schedule = parse_schedule({"hours": [2], "minutes": [15], "timezone": "America/New_York"})
    assert dst_mark(schedule, z("2026-03-08T07:00")) is DstMark.GAP_SHIFTED
    assert schedule.next_after(z("2026-03-08T00:00")) == z("2026-03-08T07:00")


def test_preview_request_defaults_and_fields() -> None:
    """count defaults to 10; schedules without a zone are read in the request's timezone."""
    request = parse_preview_request(
        {"schedules": [{"hours": [2], "minutes": [30]}], "timezone": BERLIN},
        default_timezone="UTC",
    )
    assert request.count == 10
    runs = request.runs(z("2026-03-28T12:00"))
    assert runs[0].to_json()["at"] == "2026-03-29T01:00:00Z"
    assert runs[0].dst is DstMark.GAP_SHIFTED


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({}, ["schedules"]),
        ({"schedules": [{"hours": [24]}]}, ["schedules[0].hours[0]"]),
        ({"schedules": [], "count": 0}, ["count"]),
        ({"schedules": [], "count": 1001}, ["count"]),
        ({"schedules": [], "count": True}, ["count"]),
        ({"schedules": [], "after": "tomorrow"}, ["after"]),
        ({"schedules": [], "after": "2026-01-01T00:00:00"}, ["after"]),
        ({"schedules": [], "timezone": "Mars/Olympus"}, ["timezone"]),
        ({"schedules": [], "timezone": 3}, ["timezone"]),
        ({"schedules": [], "cuont": 3}, ["cuont"]),
        ([], [""]),
    ],
)
def test_preview_request_refusals_name_the_field(body: Any, paths: list[str]) -> None:
    """Every problem is reported with its field path, through the schedules' own validator."""
    with pytest.raises(ValidationError) as caught:
        parse_preview_request(body, default_timezone="UTC")
    assert [e.path for e in caught.value.errors] == paths


@pytest.mark.parametrize("zone", ["America/New_York", "Pacific/Kiritimati", "Asia/Kathmandu"])
def test_the_ends_of_the_years_never_raise(zone: str) -> None:
    """At year 1 and year 9999, where a zone's wall clock leaves the years 1..9999, the next
    fire time is found (from the second day on) or there is none; never an OverflowError."""
    schedule = parse_schedule({"minutes": [0], "timezone": zone})
    first = schedule.next_after(datetime(1, 1, 1, tzinfo=UTC))
    assert first is not None
    assert first <= datetime(1, 1, 2, 1, tzinfo=UTC)
    assert schedule.next_after(datetime(9999, 12, 31, 23, 59, tzinfo=UTC)) is None
    runs = next_runs(
        parse_schedules([{"minutes": [0], "timezone": zone}, {"interval_sec": 60}]),
        datetime(9999, 12, 31, 22, tzinfo=UTC),
        1000,
        timezone=ZoneInfo(zone),
    )
    assert all(r.at.year == 9999 for r in runs)

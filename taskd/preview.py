"""A schedule preview: the next fire times of a set of schedules, each with the schedule that
yields it, its local time, and whether daylight-saving time moved or doubled it.

Pure, like `taskd.schedule`: no clock, no I/O. Used by `GET /api/v2/tasks/{id}/next_runs`,
`POST /api/v2/schedules/preview`, `taskd ctl next` and `taskd schedule next --explain`.

DST marks (see DESIGN.md, "DST semantics"), for calendar and cron schedules only (an interval
counts real seconds: the wall clock never moves it):

- `gap_shifted`: the instant is the end of a spring-forward gap and a slot of the schedule
  lay in the skipped hour (`dst_gap = "shift"` fired it here; a real slot at the same wall
  time, if any, is merged with it);
- `fold_first` / `fold_second`: the slot's wall time occurs twice (the fall-back hour); this is
  its first or second occurrence (`dst_fold` decides which of them fire).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from taskd.errors import FieldError, ValidationError
from taskd.schedule import (
    CalendarSchedule,
    DstGap,
    IntervalSchedule,
    ScheduleSet,
    format_utc,
    load_timezone,
    parse_instant,
    parse_schedules,
)
from taskd.validate import Fields, integer

__all__ = [
    "DEFAULT_COUNT",
    "EXPLAIN_HEADERS",
    "MAX_COUNT",
    "DstMark",
    "PreviewRequest",
    "UpcomingRun",
    "dst_mark",
    "explain_rows",
    "next_runs",
    "parse_preview_request",
]

MAX_COUNT = 1000
DEFAULT_COUNT = 10
_ONE_SECOND = timedelta(seconds=1)


class DstMark(StrEnum):
    """How daylight-saving time touched a fire time."""

    GAP_SHIFTED = "gap_shifted"
    FOLD_FIRST = "fold_first"
    FOLD_SECOND = "fold_second"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpcomingRun:
    """One previewed fire time."""

    at: datetime  # aware, UTC
    local: datetime  # aware, in the schedule's zone (an interval's: the preview's zone)
    schedule: int  # index of the schedule that yields it (the first, when several do)
    dst: DstMark | None

    def to_json(self) -> dict[str, Any]:
        """`{"at": "...Z", "local": "...+02:00", "schedule": i, "dst": null | mark}`."""
        return {
            "at": format_utc(self.at),
            "local": self.local.isoformat(),
            "schedule": self.schedule,
            "dst": None if self.dst is None else str(self.dst),
        }


def dst_mark(schedule: CalendarSchedule | IntervalSchedule, at: datetime) -> DstMark | None:
    """Whether daylight-saving time moved (`gap_shifted`) or doubled (`fold_first`,
    `fold_second`) the fire time `at` (aware) of `schedule`; None if it did neither."""
    if not isinstance(schedule, CalendarSchedule):
        return None
    zone = schedule.timezone
    local = at.astimezone(zone)
    wall = local.replace(tzinfo=None)
    first_offset = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second_offset = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first_offset is not None
    assert second_offset is not None
    if first_offset > second_offset:  # the wall time is in the repeated hour
        return DstMark.FOLD_SECOND if local.fold else DstMark.FOLD_FIRST
    if schedule.dst_gap is not DstGap.SHIFT:
        return None
    before = (at - _ONE_SECOND).astimezone(zone).utcoffset()
    offset = local.utcoffset()
    assert before is not None
    assert offset is not None
    if before < offset and schedule.has_slot_in(wall - (offset - before), wall):
        # `at` is the first instant after a skipped hour that held a slot.
        return DstMark.GAP_SHIFTED
    return None


def next_runs(
    schedules: ScheduleSet, after: datetime, count: int, *, timezone: ZoneInfo
) -> list[UpcomingRun]:
    """The first `count` fire times of `schedules` strictly after `after` (aware), in order.

    An instant several schedules yield is listed once, under the lowest index (the task fires
    once). `timezone` is where interval schedules' local times are shown. Fewer than `count`
    when the schedules stop firing (before year 9999).
    """
    if after.tzinfo is None:
        raise ValueError("next_runs needs an aware datetime")
    heap: list[tuple[datetime, int]] = []
    for index, schedule in enumerate(schedules.schedules):
        found = schedule.next_after(after)
        if found is not None:
            heap.append((found, index))
    heapq.heapify(heap)
    runs: list[UpcomingRun] = []
    while heap and len(runs) < count:
        at, index = heapq.heappop(heap)
        schedule = schedules.schedules[index]
        following = schedule.next_after(at)
        if following is not None:
            heapq.heappush(heap, (following, index))
        if runs and runs[-1].at == at:
            continue  # another schedule fires at the same instant: one run
        zone = schedule.timezone if isinstance(schedule, CalendarSchedule) else timezone
        try:
            local = at.astimezone(zone)
        except OverflowError:  # an interval's last slots of year 9999, east of UTC
            break
        runs.append(UpcomingRun(at=at, local=local, schedule=index, dst=dst_mark(schedule, at)))
    return runs


# What the DST marks say in a table, for people (`taskd ctl next`, `schedule next --explain`).
_DST_NOTES = {
    None: "",
    "gap_shifted": "moved: its wall time was skipped (DST began)",
    "fold_first": "repeated hour (DST ended): 1st occurrence",
    "fold_second": "repeated hour (DST ended): 2nd occurrence",
}
EXPLAIN_HEADERS = ("UTC", "LOCAL", "SCHEDULE", "DST")


def explain_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows for previewed runs in their JSON form (`UpcomingRun.to_json`, or an API
    answer's `next_runs`): UTC, local time with offset, schedule index, DST note."""
    return [
        [
            str(run.get("at", "")),
            str(run.get("local", "")),
            str(run.get("schedule", "")),
            _DST_NOTES.get(run.get("dst"), str(run.get("dst"))),
        ]
        for run in runs
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewRequest:
    """A validated preview request: `POST /api/v2/schedules/preview`'s body."""

    schedules: ScheduleSet
    count: int
    after: datetime | None  # None: now
    timezone: ZoneInfo

    def runs(self, now: datetime) -> list[UpcomingRun]:
        """The previewed fire times (after `after`, or after `now` when none was given)."""
        return next_runs(self.schedules, self.after or now, self.count, timezone=self.timezone)


def parse_preview_request(raw: object, *, default_timezone: str) -> PreviewRequest:
    """Validate `{"schedules": [...], "count": N, "after": TIME, "timezone": TZ}`.

    `schedules` is required (the task's own validator checks it: errors at
    `schedules[i].field`); `count` 1..`MAX_COUNT`, default `DEFAULT_COUNT`; `after` an RFC
    3339 timestamp with an offset; `timezone` (default `default_timezone`) is where schedules
    without their own zone, and interval schedules' local times, are read. Raises
    ValidationError listing every problem with its path.
    """
    fields = Fields.of(raw, "")
    count = fields.get("count", integer(minimum=1, maximum=MAX_COUNT), DEFAULT_COUNT)
    errors: list[FieldError] = []
    zone_name = fields.get("timezone", _zone_name, default_timezone)
    zone = load_timezone(zone_name, "timezone", errors)
    after: datetime | None = None
    if "after" in _as_mapping(raw):
        after = fields.get("after", _instant, None)
    schedules = ScheduleSet()
    raw_schedules = fields.require("schedules", _any)
    if raw_schedules is not None:
        try:
            schedules = parse_schedules(
                raw_schedules, default_timezone=zone_name if zone else "UTC"
            )
        except ValidationError as error:
            errors.extend(error.errors)
    errors = fields.unknown_keys() + errors
    if errors or zone is None:
        raise ValidationError(errors)
    return PreviewRequest(schedules=schedules, count=count, after=after, timezone=zone)


def _as_mapping(raw: object) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _any(value: Any, path: str) -> Any:
    return value


def _zone_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError.single(path, "must be an IANA time zone name")
    return value


def _instant(value: Any, path: str) -> datetime:
    errors: list[FieldError] = []
    parsed = parse_instant(value, path, errors)
    if parsed is None:
        raise ValidationError(errors)
    return parsed.astimezone(UTC)

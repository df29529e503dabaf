"""Schedules: when a task fires. Pure: no I/O, no clock; aware datetimes in, aware UTC out.

Three kinds, parsed from their JSON form by `parse_schedule` / `parse_schedules`:

- calendar (fylr): `weekdays`, `hours`, `minutes`, `days_of_month`, `timezone`; an absent
  criterion matches any value, every present one must hold; fires at second 0 of each
  matching local minute;
- cron: `{"cron": "30 2 * * 1-5", "timezone": ...}`, parsed and validated by croniter,
  evaluated here with the same daylight-saving rules as calendar schedules (day of month and
  day of week are ORed when both are restricted, as in cron: see `_cron_day_or`);
- interval: `{"interval_sec": N, "start_at": ...}`, every N seconds of real time.

Daylight-saving time (calendar and cron alike). A schedule whose hours are restricted follows
the wall clock: a slot in a spring-forward gap fires once at the first instant after the gap
(`dst_gap="shift"`), a slot in the repeated fall-back hour fires at its first occurrence
(`dst_fold="first"`). A schedule that does not restrict hours follows real time: gap slots do
not occur (`"skip"`) and fall-back slots fire at both occurrences (`"both"`). Either default
may be overridden per schedule with `dst_gap` and `dst_fold`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter  # type: ignore[import-untyped]

from taskd.errors import FieldError, ValidationError, join_path
from taskd.validate import (
    Check,
    Fields,
    collect,
    did_you_mean,
    fail,
    member,
    suggest,
    unknown_field_reason,
)

__all__ = [
    "WEEKDAY_NAMES",
    "CalendarSchedule",
    "DstFold",
    "DstGap",
    "IntervalSchedule",
    "Schedule",
    "ScheduleSet",
    "format_utc",
    "load_timezone",
    "parse_instant",
    "parse_schedule",
    "parse_schedules",
]


class DstGap(StrEnum):
    """What a slot inside a spring-forward gap does."""

    SHIFT = "shift"  # fire once at the first instant after the gap
    SKIP = "skip"  # do not fire


class DstFold(StrEnum):
    """Which occurrence of a slot inside a repeated fall-back hour fires."""

    FIRST = "first"
    LAST = "last"
    BOTH = "both"


# Indexed like `date.weekday()`: Monday is 0.
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_ONE_MINUTE = timedelta(minutes=1)
MAX_INTERVAL_SEC = 100 * 365 * 86_400
# Each schedule costs a computation per due time; no real task needs more than a few.
MAX_SCHEDULES = 100
# The most days each month can have (February's 29th comes in leap years).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND_DAY = datetime(1, 1, 2, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ALL_MINUTES = tuple(range(60))
_ALL_HOURS = tuple(range(24))
_ALL_DAYS = tuple(range(1, 32))
_ALL_MONTHS = tuple(range(1, 13))
_ALL_WEEKDAYS = frozenset(range(7))


class Schedule(Protocol):
    """One schedule: pure, immutable, comparable by value."""

    def next_after(self, after: datetime) -> datetime | None:
        """Return the first fire time strictly after `after`, as an aware UTC datetime.

        `after` must be aware (any zone). Returns None when the schedule never fires again
        (before year 9999). Raises ValueError for a naive `after`.
        """
        ...

    def to_json(self) -> dict[str, Any]:
        """Return the schedule's JSON form, as given (normalized: sorted, no duplicates)."""
        ...


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month]


def _require_aware(after: datetime) -> None:
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_after needs an aware datetime")


@dataclass(frozen=True, slots=True, kw_only=True)
class CalendarSchedule:
    """A wall-clock schedule: sets of minutes, hours, days, months and weekdays in one zone.

    Both calendar (fylr) and cron schedules evaluate through this class; `source` keeps the
    JSON the schedule came from. With `day_or` (cron's rule, for a cron expression whose day
    of month and day of week are both restricted as written), a day matches if either its
    day of month or its weekday does; without it, and always for calendar schedules, both
    must.
    """

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    day_or: bool
    timezone: ZoneInfo
    dst_gap: DstGap
    dst_fold: DstFold
    source: Mapping[str, Any] = field(compare=False)
    # Derived lookup tables, so the hot path does table reads instead of searches.
    _next_minute: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _next_hour: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _next_day: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _next_month: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _days_to_weekday: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _scan_days: bool = field(init=False, repr=False, compare=False)
    _either_day: bool = field(init=False, repr=False, compare=False)
    _can_fire: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_attr = object.__setattr__
        set_attr(self, "_next_minute", _next_table(self.minutes, 60))
        set_attr(self, "_next_hour", _next_table(self.hours, 24))
        set_attr(self, "_next_day", _next_table(self.days_of_month, 32))
        set_attr(self, "_next_month", _next_table(self.months, 13))
        # Days from a date with weekday i (Monday 0) to the next date on an allowed weekday.
        set_attr(
            self,
            "_days_to_weekday",
            tuple(min(((w - i) % 7 for w in self.weekdays), default=0) for i in range(7)),
        )
        either = self.day_or
        set_attr(self, "_either_day", either)
        # With weekdays unrestricted and days ANDed, the day table alone decides.
        set_attr(self, "_scan_days", either or len(self.weekdays) < 7)
        # Every month has every weekday, and over the 400-year Gregorian cycle every valid
        # (month, day) pair falls on every weekday: the schedule fires iff a pair is valid.
        set_attr(
            self,
            "_can_fire",
            either
            or any(
                day <= (29 if month == 2 else _DAYS_IN_MONTH[month])
                for month in self.months
                for day in self.days_of_month
            ),
        )

    @property
    def timezone_given(self) -> bool:
        """Whether the schedule names its own zone.

        If not, `timezone` is the default it was parsed with, and `to_json()` leaves the zone
        out: parsed again with another default (the daemon's `timezone` after a reload), the
        schedule follows that one.
        """
        return "timezone" in self.source

    @property
    def restricts_hours(self) -> bool:
        """Whether the hours are restricted (then the schedule follows the wall clock)."""
        return len(self.hours) < 24

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form the schedule was parsed from: with a `timezone` only when
        one was given (see `timezone_given`)."""
        return dict(self.source)

    def next_after(self, after: datetime) -> datetime | None:
        """Return the first fire time strictly after `after` (see `Schedule.next_after`)."""
        _require_aware(after)
        if not self._can_fire:
            return None
        try:
            return self._next_after(after)
        except OverflowError:
            # Only within a day of the ends of the years 1..9999, where a wall time or an
            # instant of the walk falls outside them: past the end nothing fires; at the
            # start the walk begins on the second day (no zone's wall clock reaches back
            # further than a day).
            if after.astimezone(UTC).year > 1:
                return None
            return self._next_after(_SECOND_DAY)

    def _next_after(self, after: datetime) -> datetime | None:
        after_utc = after.astimezone(UTC)
        seconds = (
            (after_utc.toordinal() - _EPOCH_ORDINAL) * 86400
            + after_utc.hour * 3600
            + after_utc.minute * 60
            + after_utc.second
        )
        span = _timeline(self.timezone).steady_span(seconds)
        if span is not None:
            # Away from offset changes the wall clock is UTC plus a constant: no zone lookups.
            steady_until, offset = span
            days, second_of_day = divmod(seconds + offset + 1, 86400)
            minute_of_day = -(-second_of_day // 60)
            day = date.fromordinal(days + _EPOCH_ORDINAL)
            slot = self._next_slot(
                day.year, day.month, day.day, minute_of_day // 60, minute_of_day % 60
            )
            if slot is None:
                return None
            year, month, mday, hour, minute = slot
            wall = (date(year, month, mday).toordinal() - _EPOCH_ORDINAL) * 86400
            instant = wall + hour * 3600 + minute * 60 - offset
            if instant < steady_until:
                return datetime.fromtimestamp(instant, UTC)
            # No slot matches on the wall clock before this one, and no earlier wall time
            # repeats after `after`: the exact walk may start right here.
            found = self._search(
                datetime(year, month, mday, hour, minute),
                datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None, microsecond=0),
            )
            return None if found is None else found.replace(tzinfo=UTC)
        return self._next_after_exact(after)

    def _next_after_exact(self, after: datetime) -> datetime | None:
        """`next_after` through the zone's own conversions, right across offset changes."""
        tz = self.timezone
        after_utc = after.astimezone(UTC).replace(tzinfo=None)
        local = after.astimezone(tz)
        offset = local.utcoffset()
        assert offset is not None
        wall = local.replace(tzinfo=None)
        start = wall
        if local.fold == 0:
            later_offset = wall.replace(tzinfo=tz, fold=1).utcoffset()
            assert later_offset is not None
            if later_offset < offset:
                # `after` is in the first pass of a repeated hour: slots earlier on the wall
                # clock still have their second occurrence ahead.
                start = wall - (offset - later_offset)
        found = self._search(start, after_utc)
        return None if found is None else found.replace(tzinfo=UTC)

    def _search(self, start: datetime, after_utc: datetime) -> datetime | None:
        """Walk matching wall slots from `start`; return the earliest instant > `after_utc`.

        Instants are naive UTC. Unique and gap slots map to instants in wall-clock order, so
        the first one found wins; the second occurrence of a fold slot can be beaten by the
        first occurrence of a later slot in the same fold, so the walk goes on to the fold's end.
        """
        tz = self.timezone
        best: datetime | None = None
        scanning_fold = False
        slot = self._slot_at_or_after(start)
        while slot is not None:
            offset_first = slot.replace(tzinfo=tz).utcoffset()
            offset_second = slot.replace(tzinfo=tz, fold=1).utcoffset()
            assert offset_first is not None
            assert offset_second is not None
            if offset_first == offset_second:
                if scanning_fold:
                    return best
                instant = slot - offset_first
                if instant > after_utc:
                    return instant
            elif offset_first > offset_second:
                first, second = slot - offset_first, slot - offset_second
                fold = self.dst_fold
                if fold is not DstFold.LAST and first > after_utc:
                    return first if best is None else min(best, first)
                if fold is not DstFold.FIRST and second > after_utc:
                    best = second if best is None else min(best, second)
                    scanning_fold = True
            else:
                if scanning_fold:
                    return best
                if self.dst_gap is DstGap.SHIFT:
                    instant = _gap_end(tz, slot - offset_second, slot - offset_first)
                    if instant > after_utc:
                        return instant
            try:
                slot = self._slot_at_or_after(slot + _ONE_MINUTE)
            except OverflowError:
                return best
        return best

    def has_slot_in(self, start: datetime, end: datetime) -> bool:
        """Whether a matching wall-clock minute lies in [`start`, `end`) (naive wall times).

        For telling a slot that daylight-saving time moved (a wall time in a skipped hour).
        """
        slot = self._slot_at_or_after(start)
        return slot is not None and slot < end

    def _slot_at_or_after(self, wall: datetime) -> datetime | None:
        """Return the first matching wall-clock minute at or after `wall` (naive), or None."""
        minute = wall.minute + (1 if wall.second or wall.microsecond else 0)
        slot = self._next_slot(wall.year, wall.month, wall.day, wall.hour, minute)
        return None if slot is None else datetime(*slot)

    def _next_slot(
        self, year: int, month: int, day: int, hour: int, minute: int
    ) -> tuple[int, int, int, int, int] | None:
        """Return the first matching (year, month, day, hour, minute) at or after the given one.

        The input may overflow by one unit (minute 60, hour 24, a day past the month's end,
        month 13); the search carries it. None past year 9999.
        """
        next_minute, next_hour, next_month = self._next_minute, self._next_hour, self._next_month
        while year <= 9999:
            found = next_month[month]
            if found < 0:
                year, month, day, hour, minute = year + 1, self.months[0], 1, 0, 0
                continue
            if found != month:
                month, day, hour, minute = found, 1, 0, 0
            found = self._day_at_or_after(year, month, day)
            if found < 0:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if found != day:
                day, hour, minute = found, 0, 0
            found = next_hour[hour]
            if found < 0:
                day, hour, minute = day + 1, 0, 0
                continue
            if found != hour:
                hour, minute = found, 0
            found = next_minute[minute]
            if found < 0:
                hour, minute = hour + 1, 0
                continue
            return year, month, day, hour, found
        return None

    def _day_at_or_after(self, year: int, month: int, day: int) -> int:
        """Return the first matching day of the month at or after `day`, or -1."""
        last = _days_in_month(year, month)
        if day > last:
            return -1
        next_day = self._next_day
        if not self._scan_days:
            found = next_day[day]
            return found if 0 < found <= last else -1
        weekday = date(year, month, day).weekday()
        by_weekday = day + self._days_to_weekday[weekday]
        if self._either_day:
            found = next_day[day]
            if found < 0 or by_weekday < found:
                found = by_weekday
            return found if found <= last else -1
        if len(self.days_of_month) == 31:
            return by_weekday if by_weekday <= last else -1
        found = next_day[day]
        while 0 < found <= last:
            if (weekday + found - day) % 7 in self.weekdays:
                return found
            found = next_day[found + 1]
        return -1


def _next_table(values: Sequence[int], size: int) -> tuple[int, ...]:
    """Return t with t[i] = the smallest value >= i, or -1; one entry past `size` - 1."""
    table = [-1] * (size + 1)
    following = -1
    for i in range(size, -1, -1):
        if i in values:
            following = i
        table[i] = following
    return tuple(table)


class _ZoneTimeline:
    """The UTC offsets of one zone as spans of constant offset, found by probing and cached.

    zoneinfo does not expose its transitions, so they are found by stepping a day at a time
    and bisecting to the second; each span is probed once per process and then looked up.
    Memoization only: the answers are a pure function of the zone.
    """

    _DAY = 86400
    _REACH = 200 * _DAY  # how far one probe looks for a transition in each direction

    __slots__ = ("_spans", "_starts", "_zone")

    def __init__(self, zone: ZoneInfo) -> None:
        self._zone = zone
        self._starts: list[int] = []
        self._spans: list[tuple[int, int, int, int, int]] = []

    def steady_span(self, seconds: int) -> tuple[int, int] | None:
        """Return (steady_until, offset) if instant `seconds` lies in a steady stretch.

        A steady stretch has one offset, and every wall time in it exists and is unique, so
        any instant from `seconds` up to (not including) `steady_until` is its wall time minus
        `offset`. None near a transition (or out of datetime's range): use the exact path.
        """
        i = bisect_right(self._starts, seconds) - 1
        if i < 0 or seconds >= self._spans[i][1]:
            try:
                span = self._probe(seconds)
            except (OverflowError, ValueError, OSError):
                return None
            i = bisect_right(self._starts, span[0])
            self._starts.insert(i, span[0])
            self._spans.insert(i, span)
        _, _, steady_from, steady_until, offset = self._spans[i]
        if steady_from <= seconds < steady_until:
            return steady_until, offset
        return None

    def _offset(self, seconds: int) -> int:
        offset = datetime.fromtimestamp(seconds, self._zone).utcoffset()
        assert offset is not None
        return offset.days * 86400 + offset.seconds

    def _transition(self, before: int, after: int) -> int:
        """Return the first second in (before, after] whose offset differs from `before`'s."""
        old = self._offset(before)
        while after - before > 1:
            middle = (before + after) // 2
            if self._offset(middle) == old:
                before = middle
            else:
                after = middle
        return after

    def _probe(self, seconds: int) -> tuple[int, int, int, int, int]:
        """Return (start, end, steady_from, steady_until, offset) of the span at `seconds`."""
        day, offset = self._DAY, self._offset(seconds)
        start, steady_from = seconds - self._REACH, seconds - self._REACH + day
        probe = seconds
        while probe > seconds - self._REACH:
            if self._offset(probe - day) != offset:
                start = self._transition(probe - day, probe)
                # After a fall-back the first instants repeat wall times of the old offset.
                steady_from = start + max(0, self._offset(start - 1) - offset)
                break
            probe -= day
        end, steady_until = seconds + self._REACH, seconds + self._REACH - day
        probe = seconds
        while probe < seconds + self._REACH:
            if self._offset(probe + day) != offset:
                end = self._transition(probe, probe + day)
                # Before a fall-back the last instants' wall times come again after it.
                steady_until = end - max(0, offset - self._offset(end))
                break
            probe += day
        return start, end, steady_from, steady_until, offset


_TIMELINES: dict[ZoneInfo, _ZoneTimeline] = {}


def _timeline(zone: ZoneInfo) -> _ZoneTimeline:
    timeline = _TIMELINES.get(zone)
    if timeline is None:
        timeline = _TIMELINES[zone] = _ZoneTimeline(zone)
    return timeline


def _gap_end(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """Return the transition instant (naive UTC) of the gap between `low` and `high`.

    `low` is before the transition and `high` at or after it; the answer is the first
    instant carrying the later offset, found by bisection to the second.
    """
    after_offset = high.replace(tzinfo=UTC).astimezone(tz).utcoffset()
    one_second = timedelta(seconds=1)
    while high - low > one_second:
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.replace(tzinfo=UTC).astimezone(tz).utcoffset() == after_offset:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSchedule:
    """Fires every `interval_sec` seconds of real time, at `start_at` + k * interval.

    Without `start_at` the anchor is the Unix epoch, so the slots do not depend on when the
    schedule was read (an interval of 3600 fires on every full UTC hour).
    """

    interval_sec: int
    start_at: datetime | None
    source: Mapping[str, Any] = field(compare=False)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form the schedule was parsed from."""
        return dict(self.source)

    def next_after(self, after: datetime) -> datetime | None:
        """Return the first fire time strictly after `after` (see `Schedule.next_after`)."""
        _require_aware(after)
        anchor = self.start_at or _EPOCH
        if after < anchor:
            return anchor.astimezone(UTC)
        try:
            step = timedelta(seconds=self.interval_sec)
            return (anchor + ((after - anchor) // step + 1) * step).astimezone(UTC)
        except OverflowError:
            return None


@dataclass(frozen=True, slots=True)
class ScheduleSet:
    """A task's schedules: it fires at the earliest next fire time over all of them."""

    schedules: tuple[CalendarSchedule | IntervalSchedule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.schedules)

    def __len__(self) -> int:
        return len(self.schedules)

    def next_after(self, after: datetime) -> datetime | None:
        """Return the earliest fire time strictly after `after` over all schedules, or None."""
        best: datetime | None = None
        for schedule in self.schedules:
            candidate = schedule.next_after(after)
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        return best

    def times(self, after: datetime, count: int) -> list[datetime]:
        """Return up to `count` fire times strictly after `after`, in order."""
        result: list[datetime] = []
        while len(result) < count:
            found = self.next_after(after)
            if found is None:
                break
            result.append(found)
            after = found
        return result

    def to_json(self) -> list[dict[str, Any]]:
        """Return the JSON form of every schedule."""
        return [schedule.to_json() for schedule in self.schedules]


def format_utc(instant: datetime) -> str:
    """Render an aware datetime as UTC RFC 3339 with a `Z`: `2026-03-29T01:00:00Z`."""
    text = instant.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


# ---------------------------------------------------------------------------------------
# Parsing and validation: one validator, used by the CLI, the config file and the API.

_CALENDAR_KEYS = frozenset({"weekdays", "hours", "minutes", "days_of_month"})
_DST_KEYS = frozenset({"dst_gap", "dst_fold"})
_CALENDAR_ALLOWED = _CALENDAR_KEYS | _DST_KEYS | {"timezone"}
_CRON_ALLOWED = _DST_KEYS | {"cron", "timezone"}
_INTERVAL_ALLOWED = frozenset({"interval_sec", "start_at"})
_ANY_ALLOWED = _CALENDAR_ALLOWED | _CRON_ALLOWED | _INTERVAL_ALLOWED
_INTEGERS = "a list of integers in {}..{}"
_CRON_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def parse_schedules(
    raw: object, *, default_timezone: str = "UTC", path: str = "schedules"
) -> ScheduleSet:
    """Validate a list of schedules in their JSON form and build a `ScheduleSet`.

    Raises `ValidationError` listing every problem, each with its attribute path
    (`schedules[1].hours[2]: 24 is not in 0..23`).
    """
    if not isinstance(raw, list):
        raise ValidationError.single(path, "must be a list of schedules")
    if len(raw) > MAX_SCHEDULES:
        raise ValidationError.single(
            path, f"holds {len(raw)} schedules; a task may have at most {MAX_SCHEDULES}"
        )
    errors: list[FieldError] = []
    schedules: list[CalendarSchedule | IntervalSchedule] = []
    for index, item in enumerate(raw):
        try:
            schedules.append(
                parse_schedule(item, default_timezone=default_timezone, path=f"{path}[{index}]")
            )
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    return ScheduleSet(tuple(schedules))


def parse_schedule(
    raw: object, *, default_timezone: str = "UTC", path: str = ""
) -> CalendarSchedule | IntervalSchedule:
    """Validate one schedule in its JSON form and build it.

    The kind is told by its keys: `cron`, `interval_sec`, or calendar criteria. Raises
    `ValidationError` listing every problem with its attribute path below `path`.
    """
    if not isinstance(raw, Mapping):
        raise ValidationError.single(path, "must be an object")
    errors: list[FieldError] = []
    schedule: CalendarSchedule | IntervalSchedule | None
    if "cron" in raw:
        schedule = _parse_cron(raw, default_timezone, path, errors)
    elif "interval_sec" in raw:
        schedule = _parse_interval(raw, path, errors)
    elif _CALENDAR_KEYS & raw.keys():
        schedule = _parse_calendar(raw, default_timezone, path, errors)
    else:
        extra = sorted(str(key) for key in raw.keys() - _CALENDAR_ALLOWED)
        # `{"hour": [9]}` is a typo, not an empty schedule: its "did you mean" says it all.
        if not any(suggest(key, _ANY_ALLOWED) for key in extra):
            reason = (
                "is empty: give at least one of days_of_month, hours, minutes, weekdays, "
                "or a cron expression, or interval_sec"
            )
            errors.append(FieldError(path, reason))
        errors.extend(
            FieldError(join_path(path, key), unknown_field_reason(key, _ANY_ALLOWED))
            for key in extra
        )
        schedule = None
    if errors or schedule is None:
        raise ValidationError(errors)
    return schedule


def _unknown_keys(
    raw: Mapping[Any, Any], allowed: Collection[str], path: str, errors: list[FieldError]
) -> None:
    for key in sorted(str(k) for k in raw.keys() - set(allowed)):
        errors.append(FieldError(join_path(path, key), unknown_field_reason(key, allowed)))


def _parse_timezone(
    raw: Mapping[str, Any], default: str, path: str, errors: list[FieldError]
) -> ZoneInfo | None:
    name = raw.get("timezone", default)
    field_path = join_path(path, "timezone")
    if not isinstance(name, str) or not name:
        errors.append(FieldError(field_path, "must be an IANA time zone name"))
        return None
    return load_timezone(name, field_path, errors)


def load_timezone(name: str, path: str, errors: list[FieldError]) -> ZoneInfo | None:
    """Return the zone called `name`, or add an error at `path` and return None.

    A name that differs from a known one only in case is that zone: the result's `key` is
    the canonical spelling (`europe/berlin` gives `Europe/Berlin`), whatever the file
    system. An unknown name's error suggests the closest known one.
    """
    canonical = _zone_spellings().get(name.lower(), name)
    try:
        return ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        hint = did_you_mean(name, _zone_spellings().values())
        errors.append(FieldError(path, f"unknown time zone {name!r}{hint}"))
        return None


@cache
def _zone_spellings() -> dict[str, str]:
    """Every known zone name by its lowercase form; read once, on first need."""
    return {zone.lower(): zone for zone in available_timezones()}


def _parse_dst(
    raw: Mapping[str, Any], restricts_hours: bool, path: str, errors: list[FieldError]
) -> tuple[DstGap, DstFold]:
    fields = Fields(raw, path)
    gap = fields.get("dst_gap", member(DstGap), DstGap.SHIFT if restricts_hours else DstGap.SKIP)
    fold = fields.get(
        "dst_fold", member(DstFold), DstFold.FIRST if restricts_hours else DstFold.BOTH
    )
    errors.extend(fields.errors)
    return gap, fold


def _criterion(
    raw: Mapping[str, Any],
    key: str,
    item: Check[int],
    what: str,
    path: str,
    errors: list[FieldError],
) -> tuple[int, ...] | None:
    """Validate `raw[key]` as a non-empty list of `item`s (`what`: "a list of ..."), returned
    sorted and without duplicates; None if absent or refused."""
    if key not in raw:
        return None
    values = raw[key]
    field_path = join_path(path, key)
    if not isinstance(values, list):
        errors.append(FieldError(field_path, f"must be {what}"))
        return None
    if not values:
        errors.append(FieldError(field_path, "must not be empty (leave it out to match any)"))
        return None
    items = ((f"{field_path}[{index}]", value) for index, value in enumerate(values))
    try:
        return tuple(sorted(set(collect(items, item))))
    except ValidationError as error:
        errors.extend(error.errors)
        return ()


def _in_range(low: int, high: int) -> Check[int]:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, f"{value!r} is not an integer")
        if not low <= value <= high:
            fail(path, f"{value} is not in {low}..{high}")
        return value

    return check


# Every spelling a calendar weekday may have, in any case: `monday` and cron's `mon`.
_WEEKDAY_SPELLINGS = {
    **{name: index for index, name in enumerate(WEEKDAY_NAMES)},
    **{name[:3]: index for index, name in enumerate(WEEKDAY_NAMES)},
}


def _weekday(value: Any, path: str) -> int:
    index = _WEEKDAY_SPELLINGS.get(value.lower()) if isinstance(value, str) else None
    if index is None:
        close = suggest(value, WEEKDAY_NAMES) if isinstance(value, str) else None
        hint = f"; did you mean {close!r}?" if close is not None else ""
        names = "sunday, monday, ... saturday, or sun, mon, ... sat"
        fail(path, f"{value!r} is not a weekday ({names}){hint}")
    return index


def _normalized_source(raw: Mapping[str, Any], timezone: ZoneInfo) -> dict[str, Any]:
    """The calendar schedule's JSON form: lists sorted without duplicates, weekdays and the
    zone in their canonical spelling (`monday` for `Mon`, `Europe/Berlin`)."""
    source: dict[str, Any] = {}
    for key, value in raw.items():
        if key in {"hours", "minutes", "days_of_month"}:
            value = sorted(set(value))
        elif key == "weekdays":
            given = {_WEEKDAY_SPELLINGS[name.lower()] for name in value}
            value = [name for index, name in enumerate(WEEKDAY_NAMES) if index in given]
        elif key == "timezone":
            value = timezone.key
        source[key] = value
    return source


def _parse_calendar(
    raw: Mapping[str, Any], default_timezone: str, path: str, errors: list[FieldError]
) -> CalendarSchedule | None:
    _unknown_keys(raw, _CALENDAR_ALLOWED, path, errors)
    minutes = _criterion(raw, "minutes", _in_range(0, 59), _INTEGERS.format(0, 59), path, errors)
    hours = _criterion(raw, "hours", _in_range(0, 23), _INTEGERS.format(0, 23), path, errors)
    days = _criterion(raw, "days_of_month", _in_range(1, 31), _INTEGERS.format(1, 31), path, errors)
    weekdays = _criterion(raw, "weekdays", _weekday, "a list of weekday names", path, errors)
    tz = _parse_timezone(raw, default_timezone, path, errors)
    hours = hours or _ALL_HOURS
    gap, fold = _parse_dst(raw, len(hours) < 24, path, errors)
    if errors or tz is None:
        return None
    return CalendarSchedule(
        minutes=minutes or _ALL_MINUTES,
        hours=hours,
        days_of_month=days or _ALL_DAYS,
        months=_ALL_MONTHS,
        weekdays=frozenset(weekdays) if weekdays else _ALL_WEEKDAYS,
        day_or=False,
        timezone=tz,
        dst_gap=gap,
        dst_fold=fold,
        source=_normalized_source(raw, tz),
    )


def _check_cron_syntax(expression: str) -> str | None:
    """Return why taskd refuses `expression`, or None if croniter may judge it.

    Each field is checked here first, so that a refusal names its field and value
    (`minute: 61 is not in 0..59`) instead of quoting croniter on the whole expression.
    """
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in _CRON_ALIASES:
            return f"unknown alias {text!r} (use one of {', '.join(sorted(_CRON_ALIASES))})"
        return None
    fields = text.split()
    if len(fields) != 5:
        return (
            f"has {len(fields)} fields; taskd takes the standard 5 "
            "(minute hour day-of-month month day-of-week)"
        )
    problems = [
        problem
        for cron_field, spec in zip(fields, _CRON_FIELDS, strict=True)
        if (problem := _cron_field_problem(cron_field, spec)) is not None
    ]
    return "; ".join(problems) or None


@dataclass(frozen=True, slots=True)
class _CronField:
    """One of the five fields: its name, its range and the names cron knows for it."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # cron's three-letter names, lowercase
    long_names: tuple[str, ...] = ()  # the same, spelt out, in the same order


_CRON_FIELDS = (
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day of month", 1, 31),
    _CronField(
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        (
            *("january", "february", "march", "april", "may", "june", "july"),
            *("august", "september", "october", "november", "december"),
        ),
    ),
    _CronField(
        "day of week",
        0,
        7,
        ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
        ("sunday", *WEEKDAY_NAMES[:-1]),
    ),
)
_CRON_EXTENSION = re.compile(r"[#()]|^\d*(?:L|W|LW|H)\d*$", re.IGNORECASE)
_CRON_WORD = re.compile(r"[A-Za-z]+")


def _cron_field_problem(text: str, spec: _CronField) -> str | None:
    """Return why taskd refuses one cron field, naming the field, or None."""
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if not base:
            return f"{spec.name}: {text!r} has an empty item"
        values = [] if base in {"*", "?"} else base.split("-", 1)
        if _CRON_EXTENSION.search(item) or any(_CRON_EXTENSION.search(v) for v in values):
            names = f", names ({spec.names[0]}-{spec.names[-1]})" if spec.names else ""
            return (
                f"{spec.name}: {item!r} uses an extension taskd cannot evaluate exactly "
                f"('L', 'W', '#', 'H'); only numbers{names}, '*', ',', '-', '/' and '?' "
                "are supported"
            )
        if base == "?" and spec.name not in {"day of month", "day of week"}:
            return f"{spec.name}: '?' is allowed only in day of month and day of week"
        if slash:
            if not (step.isascii() and step.isdigit()):
                return f"{spec.name}: the step in {item!r} must be a whole number"
            if int(step) == 0:
                return f"{spec.name}: step 0 in {item!r} never advances; use a step of 1 or more"
        for value in values:
            if value.isascii() and value.isdigit():
                if not spec.low <= int(value) <= spec.high:
                    return f"{spec.name}: {int(value)} is not in {spec.low}..{spec.high}"
            elif _CRON_WORD.fullmatch(value) and value.lower() not in (
                *spec.names,
                *spec.long_names,
            ):
                return _cron_name_problem(text, value, spec)
            elif not _CRON_WORD.fullmatch(value):
                return f"{spec.name}: {item!r} is not a number, a name, a range or a step"
    return None


def _cron_name_problem(text: str, word: str, spec: _CronField) -> str:
    """Why `word` is refused in field `text`. When every name in the field is cron's own or
    the start of a spelt-out one (`monday-friday`), say the field in cron's names (`mon-fri`);
    else suggest the closest name."""
    if not spec.names:
        return f"{spec.name}: {word!r} is not a number (names are for month and day of week)"

    def short(name: str) -> str | None:
        lowered = name.lower()
        if lowered in spec.names:
            return lowered
        for cron_name, full in zip(spec.names, spec.long_names, strict=True):
            if len(lowered) > 3 and full.startswith(lowered):  # monday, tues, sept
                return cron_name
        return None

    if all(short(found) for found in _CRON_WORD.findall(text)):
        fixed = _CRON_WORD.sub(lambda match: short(match[0]) or match[0], text)
        return f"{spec.name}: {word!r} is not a name cron knows; use {fixed}"
    known = f"cron knows {', '.join(spec.names)}"
    close = suggest(word, (*spec.names, *spec.long_names))
    if close is not None:
        return (
            f"{spec.name}: {word!r} is not a name cron knows; "
            f"did you mean {short(close)!r}? ({known})"
        )
    return f"{spec.name}: {word!r} is not a name cron knows ({known})"


_LONG_NAMES = {
    long: short
    for spec in _CRON_FIELDS
    for short, long in zip(spec.names, spec.long_names, strict=True)
}


def _short_names(expression: str) -> str:
    """Write spelt-out names (`monday-friday`, `January`) as cron's own (`mon-fri`, `jan`):
    taskd takes both spellings, croniter only the short one."""
    return _CRON_WORD.sub(lambda match: _LONG_NAMES.get(match[0].lower(), match[0]), expression)


_SINGLE_RANGE = re.compile(r"^(\w+)-(\w+)(?:/\d+)?$")


def _collapse_single_ranges(expression: str) -> str:
    """Rewrite ranges of one value (`19-19`, `mon-mon/2`) as that value.

    croniter reads such a range as the whole field (`0 19-19 * * *` would fire every hour);
    cron reads it as the one value.
    """
    fields = []
    for cron_field in expression.split():
        items = []
        for item in cron_field.split(","):
            match = _SINGLE_RANGE.match(item)
            if match and match[1].lower() == match[2].lower():
                item = match[1]
            items.append(item)
        fields.append(",".join(items))
    return " ".join(fields)


def _cron_set(values: Sequence[int | str], full: tuple[int, ...]) -> tuple[int, ...]:
    # croniter keeps a `*` that is one item of a list (`*,31`) as is: the list is the field.
    if "*" in values:
        return full
    return tuple(sorted({int(v) for v in values}))


def _cron_day_or(expression: str) -> bool:
    """Whether a day matches when either its day of month or its weekday does.

    POSIX: when both fields are "specified as an element or list", that is anything but
    `*`; Vixie cron (and cronie) look at the first character only, so `*/2` is unrestricted
    too, and `1-31` or `0-6` written out are restricted (`0 12 1-31 * 1` fires every day).
    `?` is croniter's `*`. The aliases restrict at most one of the two.
    """
    fields = expression.split()
    if len(fields) != 5:
        return False
    return not fields[2].startswith(("*", "?")) and not fields[4].startswith(("*", "?"))


def _parse_cron(
    raw: Mapping[str, Any], default_timezone: str, path: str, errors: list[FieldError]
) -> CalendarSchedule | None:
    _unknown_keys(raw, _CRON_ALLOWED, path, errors)
    tz = _parse_timezone(raw, default_timezone, path, errors)
    expression = raw["cron"]
    cron_path = join_path(path, "cron")
    if not isinstance(expression, str):
        errors.append(FieldError(cron_path, "must be a cron expression string"))
        return None
    refusal = _check_cron_syntax(expression)
    if refusal is None:
        try:
            expanded, nth_weekdays = croniter.expand(
                _collapse_single_ranges(_short_names(expression))
            )
        except Exception as error:  # croniter raises several unrelated types for bad input
            refusal = str(error) or type(error).__name__
        else:
            if nth_weekdays or any("l" in values for values in expanded):
                refusal = "'L' and '#' are not supported"
    if refusal is not None:
        errors.append(FieldError(cron_path, f"invalid cron expression {expression!r}: {refusal}"))
        return None
    minute_f, hour_f, day_f, month_f, weekday_f = expanded
    days = _cron_set(day_f, _ALL_DAYS)
    months = _cron_set(month_f, _ALL_MONTHS)
    day_or = _cron_day_or(expression)
    if not day_or and not any(min(days) <= _MONTH_DAYS[month - 1] for month in months):
        # Day-of-month and month alone decide the date, and no month has such a day.
        errors.append(
            FieldError(
                cron_path,
                f"invalid cron expression {expression!r}: never fires (no month of"
                f" {', '.join(map(str, months))} has day {', '.join(map(str, days))})",
            )
        )
        return None
    hours = _cron_set(hour_f, _ALL_HOURS)
    gap, fold = _parse_dst(raw, len(hours) < 24, path, errors)
    if errors or tz is None:
        return None
    # croniter counts weekdays from Sunday = 0; taskd from Monday = 0, like `date.weekday()`.
    cron_weekdays = _cron_set(weekday_f, tuple(range(7)))
    return CalendarSchedule(
        minutes=_cron_set(minute_f, _ALL_MINUTES),
        hours=hours,
        days_of_month=days,
        months=months,
        weekdays=frozenset((d - 1) % 7 for d in cron_weekdays),
        day_or=day_or,
        timezone=tz,
        dst_gap=gap,
        dst_fold=fold,
        source={**raw, "timezone": tz.key} if "timezone" in raw else dict(raw),
    )


def _parse_interval(
    raw: Mapping[str, Any], path: str, errors: list[FieldError]
) -> IntervalSchedule | None:
    _unknown_keys(raw, _INTERVAL_ALLOWED, path, errors)
    interval = raw["interval_sec"]
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        errors.append(
            FieldError(join_path(path, "interval_sec"), f"{interval!r} is not a whole number >= 1")
        )
    elif interval > MAX_INTERVAL_SEC:
        errors.append(
            FieldError(
                join_path(path, "interval_sec"),
                f"{interval} is more than {MAX_INTERVAL_SEC} (100 years)",
            )
        )
    start_at = None
    if "start_at" in raw:
        start_at = parse_instant(raw["start_at"], join_path(path, "start_at"), errors)
    if errors:
        return None
    return IntervalSchedule(interval_sec=interval, start_at=start_at, source=dict(raw))


def parse_instant(value: object, path: str, errors: list[FieldError]) -> datetime | None:
    """Parse an RFC 3339 timestamp with an offset (`Z` or `+02:00`) into an aware datetime.

    Adds an error at `path` and returns None when `value` is not one.
    """
    if isinstance(value, datetime):  # TOML has native datetimes
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            errors.append(FieldError(path, f"{value!r} is not an RFC 3339 timestamp"))
            return None
    else:
        errors.append(FieldError(path, f"{value!r} is not an RFC 3339 timestamp"))
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        errors.append(FieldError(path, f"{value!s} has no UTC offset (add 'Z' or '+hh:mm')"))
        return None
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC, say
        errors.append(FieldError(path, f"{value!s} is outside the years 1..9999 in UTC"))
        return None
    return parsed

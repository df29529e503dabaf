"""A brute-force reference for schedule fire times, written from the contract alone.

It does not import `taskd.schedule`; cron field sets come from `croniter.croniter.expand`.
The walk visits UTC instants minute by minute from `after` (zones with whole-minute offsets
only) and applies the rules literally:

- an instant whose local wall time matches the criteria fires if that wall time is unique;
  if the wall time is ambiguous (fall-back fold) it fires per `dst_fold`: "first" for the
  earlier occurrence, "last" for the later one, "both" for either;
- at every transition instant T where the UTC offset increases (a spring-forward gap), if
  some matching wall minute lies in the skipped wall range and `dst_gap == "shift"`, the
  schedule fires at T (one firing, which is also T's own slot if T matches).

Defaults: a schedule that restricts hours uses gap "shift" / fold "first" (wall clock);
one that does not uses gap "skip" / fold "both" (real time).

`accelerate=True` (the default) jumps over whole local hours or days that cannot match, but
only when the UTC offset is the same at both ends of the jump, so no transition (and hence no
gap or fold) is jumped over; `accelerate=False` is the plain minute-by-minute walk, kept to
cross-check the accelerated one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

MINUTE = timedelta(minutes=1)
DEFAULT_MAX_DAYS = 400

# Names as in the contract, mapped to the cron convention (0 = Sunday).
WEEKDAY_NUMBERS = {
    "sunday": 0,
    "monday": 1,
    "tuesday": 2,
    "wednesday": 3,
    "thursday": 4,
    "friday": 5,
    "saturday": 6,
}


def cron_weekday(day: date) -> int:
    """Day of week in the cron convention: 0 = Sunday .. 6 = Saturday."""
    return (day.weekday() + 1) % 7


def _naive_wall(instant: datetime, offset: timedelta) -> datetime:
    """The wall time (naive) that UTC `instant` shows under a fixed `offset`."""
    return (instant + offset).replace(tzinfo=None)


@dataclass(frozen=True)
class RefWallSchedule:
    """A calendar or cron schedule: sets of allowed values (None = any) plus DST policy."""

    tz: ZoneInfo
    minutes: frozenset[int] | None
    hours: frozenset[int] | None
    days_of_month: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # cron convention, 0 = Sunday
    day_or: bool  # cron: day of month OR day of week (both restricted as written)
    dst_gap: str
    dst_fold: str

    def day_matches(self, day: date) -> bool:
        """Whether any wall minute of local date `day` can match."""
        if self.months is not None and day.month not in self.months:
            return False
        dom_ok = self.days_of_month is None or day.day in self.days_of_month
        dow_ok = self.weekdays is None or cron_weekday(day) in self.weekdays
        if self.day_or:
            return dom_ok or dow_ok
        return dom_ok and dow_ok

    def hour_matches(self, hour: int) -> bool:
        """Whether local hour `hour` is allowed."""
        return self.hours is None or hour in self.hours

    def matches(self, wall: datetime) -> bool:
        """Whether naive wall time `wall` (second 0) is one of the schedule's slots."""
        return (
            self.day_matches(wall.date())
            and self.hour_matches(wall.hour)
            and (self.minutes is None or wall.minute in self.minutes)
        )

    def _offset(self, instant: datetime) -> timedelta:
        offset = instant.astimezone(self.tz).utcoffset()
        assert offset is not None
        assert offset % MINUTE == timedelta(0), "reference handles whole-minute offsets only"
        return offset

    def _fold_allows(self, instant: datetime, wall: datetime) -> bool:
        """Whether a matching wall time shown at `instant` fires, per `dst_fold`."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        if first == second:
            return True  # a unique wall time
        assert instant in (first, second)
        if instant == min(first, second):
            return self.dst_fold in ("first", "both")
        return self.dst_fold in ("last", "both")

    def _gap_has_match(self, wall_from: datetime, wall_to: datetime) -> bool:
        """Whether a slot lies in the skipped wall range [wall_from, wall_to)."""
        wall = wall_from
        while wall < wall_to:
            if self.matches(wall):
                return True
            wall += MINUTE
        return False

    def next_after(
        self, after: datetime, *, max_days: int = DEFAULT_MAX_DAYS, accelerate: bool = True
    ) -> datetime | None:
        """First fire time strictly after `after`, in UTC; None if none within `max_days`."""
        assert after.tzinfo is not None
        start = after.astimezone(UTC)
        instant = start.replace(second=0, microsecond=0) + MINUTE  # first minute > after
        end = start + timedelta(days=max_days)
        previous_offset = self._offset(instant - MINUTE)
        while instant <= end:
            offset = self._offset(instant)
            if (
                offset > previous_offset
                and self.dst_gap == "shift"
                and self._gap_has_match(
                    _naive_wall(instant, previous_offset), _naive_wall(instant, offset)
                )
            ):
                return instant
            wall = _naive_wall(instant, offset)
            if self.matches(wall) and self._fold_allows(instant, wall):
                return instant
            previous_offset = offset
            step = MINUTE
            if accelerate:
                if not self.day_matches(wall.date()):
                    midnight = datetime.combine(
                        wall.date() + timedelta(days=1), datetime.min.time()
                    )
                    step = midnight - wall
                elif not self.hour_matches(wall.hour):
                    step = timedelta(minutes=60 - wall.minute)
                # Jump only if no offset change happens strictly before the landing minute.
                if step > MINUTE and self._offset(instant + step - MINUTE) != offset:
                    step = MINUTE
            instant += step
        return None


@dataclass(frozen=True)
class RefInterval:
    """An interval schedule: fires at anchor + k * step for k >= 0."""

    step: timedelta
    anchor: datetime

    def next_after(self, after: datetime, **_: Any) -> datetime | None:
        """First anchor + k * step (k >= 0) strictly after `after`, in UTC."""
        if after < self.anchor:
            return self.anchor.astimezone(UTC)
        k = (after - self.anchor) // self.step + 1
        return (self.anchor + k * self.step).astimezone(UTC)


RefSchedule = RefWallSchedule | RefInterval


def _policy(raw: Mapping[str, Any], hour_restricted: bool) -> tuple[str, str]:
    gap = raw.get("dst_gap", "shift" if hour_restricted else "skip")
    fold = raw.get("dst_fold", "first" if hour_restricted else "both")
    assert gap in ("shift", "skip")
    assert fold in ("first", "last", "both")
    return gap, fold


def _weekday_number(name: str) -> int:
    """A calendar weekday, `monday` or `mon` in any case, in the cron convention."""
    lowered = name.lower()
    (number,) = (n for full, n in WEEKDAY_NUMBERS.items() if lowered in (full, full[:3]))
    return number


def _restricted(cron_field: str) -> bool:
    """POSIX: a day field is restricted unless it is `*`; Vixie cron looks at the first
    character only (`*/2` is unrestricted); `?` is croniter's `*`."""
    return not cron_field.startswith(("*", "?"))


def _from_calendar(raw: Mapping[str, Any], tz: ZoneInfo) -> RefWallSchedule:
    def field(key: str) -> frozenset[int] | None:
        return None if key not in raw else frozenset(raw[key])

    hours = field("hours")
    weekdays = (
        None if "weekdays" not in raw else frozenset(_weekday_number(w) for w in raw["weekdays"])
    )
    gap, fold = _policy(raw, hours is not None and hours != frozenset(range(24)))
    return RefWallSchedule(
        tz=tz,
        minutes=field("minutes"),
        hours=hours,
        days_of_month=field("days_of_month"),
        months=None,
        weekdays=weekdays,
        day_or=False,
        dst_gap=gap,
        dst_fold=fold,
    )


def _single_value_ranges(expression: str) -> str:
    """Rewrite `a-a` and `a-a/n` items as `a`, as cron reads them.

    croniter 7 expands a one-value range to the whole field (`* 4-4 * * *` = every hour).
    """
    items = []
    for item in expression.split():
        parts = []
        for part in item.split(","):
            low, dash, rest = part.partition("-")
            high = rest.partition("/")[0]
            parts.append(low if dash and low.lower() == high.lower() else part)
        items.append(",".join(parts))
    return " ".join(items)


def _from_cron(raw: Mapping[str, Any], tz: ZoneInfo) -> RefWallSchedule:
    text = raw["cron"].split()
    fields, extra = croniter.expand(_single_value_ranges(raw["cron"]))
    assert not extra, "reference handles plain 5-field expressions only"

    def field(index: int) -> frozenset[int] | None:
        values = fields[index]
        if values == ["*"]:
            return None
        assert all(isinstance(v, int) for v in values), values
        return frozenset(values)

    minutes, hours, doms, months, dows = (field(i) for i in range(5))
    if dows is not None:
        dows = frozenset(d % 7 for d in dows)
    gap, fold = _policy(raw, hours is not None)
    return RefWallSchedule(
        tz=tz,
        minutes=minutes,
        hours=hours,
        days_of_month=doms,
        months=months,
        weekdays=dows,
        day_or=len(text) == 5 and _restricted(text[2]) and _restricted(text[4]),
        dst_gap=gap,
        dst_fold=fold,
    )


def reference(raw: Mapping[str, Any], *, default_timezone: str = "UTC") -> RefSchedule:
    """Build the reference schedule for a valid raw schedule dict."""
    if "interval_sec" in raw:
        step = timedelta(seconds=raw["interval_sec"])
        if "start_at" in raw:
            anchor = datetime.fromisoformat(raw["start_at"])
            assert anchor.tzinfo is not None
        else:
            anchor = datetime(1970, 1, 1, tzinfo=UTC)
        return RefInterval(step=step, anchor=anchor)
    tz = ZoneInfo(raw.get("timezone", default_timezone))
    if "cron" in raw:
        return _from_cron(raw, tz)
    return _from_calendar(raw, tz)


def ref_next_after(
    raw: Mapping[str, Any],
    after: datetime,
    *,
    default_timezone: str = "UTC",
    max_days: int = DEFAULT_MAX_DAYS,
    accelerate: bool = True,
) -> datetime | None:
    """Reference `next_after` of one raw schedule."""
    schedule = reference(raw, default_timezone=default_timezone)
    return schedule.next_after(after, max_days=max_days, accelerate=accelerate)


def ref_times(
    raw: Mapping[str, Any],
    after: datetime,
    count: int,
    *,
    default_timezone: str = "UTC",
    max_days: int = DEFAULT_MAX_DAYS,
) -> list[datetime]:
    """Reference chain: up to `count` successive fire times after `after`."""
    schedule = reference(raw, default_timezone=default_timezone)
    times: list[datetime] = []
    current = after
    for _ in range(count):
        found = schedule.next_after(current, max_days=max_days)
        if found is None:
            break
        times.append(found)
        current = found
    return times


def ref_set_next_after(
    raws: list[Mapping[str, Any]],
    after: datetime,
    *,
    default_timezone: str = "UTC",
    max_days: int = DEFAULT_MAX_DAYS,
) -> datetime | None:
    """Reference for a schedule set: the earliest next fire time over its schedules."""
    found = [
        ref_next_after(raw, after, default_timezone=default_timezone, max_days=max_days)
        for raw in raws
    ]
    present = [t for t in found if t is not None]
    return min(present) if present else None

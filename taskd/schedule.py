"""Schedules: when a task fires. Pure: no I/O, no clock; aware UTC datetimes in and out.

(Implementation in progress. Public contract:)

- `parse_schedule(raw, *, default_timezone="UTC", path="") -> Schedule`
- `parse_schedules(raw, *, default_timezone="UTC", path="schedules") -> ScheduleSet`
  Both raise `taskd.errors.ValidationError` whose `.errors` is a list of
  `FieldError(path, reason)`, e.g. `schedules[1].hours[2]: 24 is not in 0..23`.
- `Schedule.next_after(after: datetime) -> datetime | None`: the first fire time strictly
  after `after` (an aware datetime in any zone), as an aware UTC datetime; None if never.
- `ScheduleSet.next_after(after)`: earliest over its schedules; `ScheduleSet.times(after, count)`
  the next `count` fire times as a list.
- Schedules are frozen dataclasses; `to_json()` gives back their normalized JSON form.
"""

"""Table-driven fire-time tests for taskd.schedule, with hand-computed UTC instants.

Every expected instant below was worked out by hand from the zone's rules (transition
instants noted in the section comments); none was produced by the engine. Each row is also
checked against the brute-force reference in `schedule_reference.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskd.errors import ValidationError
from taskd.schedule import (
    CalendarSchedule,
    DstFold,
    DstGap,
    ScheduleSet,
    parse_schedule,
    parse_schedules,
)
from tests.schedule_reference import ref_next_after, ref_set_next_after, ref_times

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"
APIA = "Pacific/Apia"
SANTIAGO = "America/Santiago"
KATHMANDU = "Asia/Kathmandu"


def z(text: str) -> datetime:
    """A UTC instant from 'YYYY-MM-DDTHH:MM[:SS]' (the 'Z' is implied)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    """One table row: a schedule, an `after` instant and the next fire times (UTC)."""

    id: str
    raw: dict[str, Any]
    after: str
    expected: list[str]
    max_days: int = 400  # bound of the reference walk

    @property
    def after_utc(self) -> datetime:
        """`after` as an aware UTC datetime."""
        return z(self.after)

    @property
    def expected_utc(self) -> list[datetime]:
        """The expected fire times as aware UTC datetimes."""
        return [z(t) for t in self.expected]


def tz(name: str, **raw: Any) -> dict[str, Any]:
    """A raw schedule with `timezone` set to `name`."""
    return {**raw, "timezone": name}


# fmt: off
ROWS = [
    # ---- Europe/Berlin, spring 2026-03-29: 02:00 CET (+1) -> 03:00 CEST (+2) at 01:00Z.
    # Wall 02:00-02:59 does not exist that day.
    # 02:30 is in the gap -> shifted to 03:00 CEST = 01:00Z; later days 02:30 CEST = 00:30Z.
    Row("berlin-spring-shift", tz(BERLIN, hours=[2], minutes=[30]), "2026-03-28T12:00",
        ["2026-03-29T01:00", "2026-03-30T00:30", "2026-03-31T00:30"]),
    # Four gap slots 02:00/15/30/45 collapse into the one firing at 01:00Z.
    Row("berlin-spring-collapse", tz(BERLIN, hours=[2], minutes=[0, 15, 30, 45]),
        "2026-03-28T23:00", ["2026-03-29T01:00", "2026-03-30T00:00", "2026-03-30T00:15"]),
    # 02:00 (gap, shifted to 03:00) and the real 03:00 slot are the same instant: one firing.
    Row("berlin-spring-collapse-gap-end", tz(BERLIN, hours=[2, 3], minutes=[0]),
        "2026-03-28T23:00", ["2026-03-29T01:00", "2026-03-30T00:00", "2026-03-30T01:00"]),
    # Override: the gap slot is skipped.
    Row("berlin-spring-skip", tz(BERLIN, hours=[2], minutes=[30], dst_gap="skip"),
        "2026-03-28T12:00", ["2026-03-30T00:30", "2026-03-31T00:30"]),
    # Not hour-restricted: 01:30 CET = 00:30Z, 02:30 missing, 03:30 CEST = 01:30Z, 04:30 = 02:30Z.
    Row("berlin-spring-minutes-only", tz(BERLIN, minutes=[30]), "2026-03-29T00:00",
        ["2026-03-29T00:30", "2026-03-29T01:30", "2026-03-29T02:30"]),
    # All 24 hours listed counts as not hour-restricted: same as minutes only.
    Row("berlin-spring-all-hours", tz(BERLIN, hours=list(range(24)), minutes=[30]),
        "2026-03-29T00:00", ["2026-03-29T00:30", "2026-03-29T01:30", "2026-03-29T02:30"]),
    # Override on a real-time schedule: the missing 02:30 shifts to 01:00Z.
    Row("berlin-spring-minutes-only-shift", tz(BERLIN, minutes=[30], dst_gap="shift"),
        "2026-03-29T00:00", ["2026-03-29T00:30", "2026-03-29T01:00", "2026-03-29T01:30"]),
    Row("berlin-spring-cron", tz(BERLIN, cron="30 2 * * *"), "2026-03-28T12:00",
        ["2026-03-29T01:00", "2026-03-30T00:30"]),
    Row("berlin-spring-cron-skip", tz(BERLIN, cron="30 2 * * *", dst_gap="skip"),
        "2026-03-28T12:00", ["2026-03-30T00:30", "2026-03-31T00:30"]),
    # 2026-03-29 is a Sunday; next Sunday 2026-04-05 02:30 CEST = 00:30Z.
    Row("berlin-spring-weekday", tz(BERLIN, weekdays=["sunday"], hours=[2], minutes=[30]),
        "2026-03-22T12:00", ["2026-03-29T01:00", "2026-04-05T00:30"]),
    # Every 15 minutes stays every 15 minutes of real time: 01:45 CET, 03:00 CEST, ...
    Row("berlin-spring-every-15", tz(BERLIN, cron="*/15 * * * *"), "2026-03-29T00:30",
        ["2026-03-29T00:45", "2026-03-29T01:00", "2026-03-29T01:15", "2026-03-29T01:30"]),
    # @hourly: 01:00 CET = 00:00Z, (02:00 missing), 03:00 CEST = 01:00Z, 04:00 CEST = 02:00Z.
    Row("berlin-spring-hourly-alias", tz(BERLIN, cron="@hourly"), "2026-03-28T23:30",
        ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"]),
    # ---- Europe/Berlin, fall 2026-10-25: 03:00 CEST (+2) -> 02:00 CET (+1) at 01:00Z.
    # Wall 02:00-02:59 occurs at 00:00-00:59Z (CEST) and again at 01:00-01:59Z (CET).
    Row("berlin-fall-first", tz(BERLIN, hours=[2], minutes=[30]), "2026-10-24T12:00",
        ["2026-10-25T00:30", "2026-10-26T01:30"]),
    Row("berlin-fall-last", tz(BERLIN, hours=[2], minutes=[30], dst_fold="last"),
        "2026-10-24T12:00", ["2026-10-25T01:30", "2026-10-26T01:30"]),
    Row("berlin-fall-both", tz(BERLIN, hours=[2], minutes=[30], dst_fold="both"),
        "2026-10-24T12:00", ["2026-10-25T00:30", "2026-10-25T01:30", "2026-10-26T01:30"]),
    # Hour-restricted cron: only the first 02:00-02:45 (CEST), then 02:00 CET next day.
    Row("berlin-fall-cron-first", tz(BERLIN, cron="*/15 2 * * *"), "2026-10-24T12:00",
        ["2026-10-25T00:00", "2026-10-25T00:15", "2026-10-25T00:30", "2026-10-25T00:45",
         "2026-10-26T01:00"]),
    Row("berlin-fall-cron-last", tz(BERLIN, cron="0 2 * * *", dst_fold="last"),
        "2026-10-24T12:00", ["2026-10-25T01:00", "2026-10-26T01:00"]),
    # Eight firings in 00:00Z..01:45Z, then 03:00 CET = 02:00Z.
    Row("berlin-fall-every-15-cron", tz(BERLIN, cron="*/15 * * * *"), "2026-10-24T23:45",
        ["2026-10-25T00:00", "2026-10-25T00:15", "2026-10-25T00:30", "2026-10-25T00:45",
         "2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30", "2026-10-25T01:45",
         "2026-10-25T02:00"]),
    Row("berlin-fall-every-15-calendar", tz(BERLIN, minutes=[0, 15, 30, 45]), "2026-10-24T23:45",
        ["2026-10-25T00:00", "2026-10-25T00:15", "2026-10-25T00:30", "2026-10-25T00:45",
         "2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30", "2026-10-25T01:45",
         "2026-10-25T02:00"]),
    # Fold "first" on a real-time schedule: the CET repetition 01:00-01:45Z is left out.
    Row("berlin-fall-every-15-first", tz(BERLIN, cron="*/15 * * * *", dst_fold="first"),
        "2026-10-24T23:45",
        ["2026-10-25T00:00", "2026-10-25T00:15", "2026-10-25T00:30", "2026-10-25T00:45",
         "2026-10-25T02:00", "2026-10-25T02:15"]),
    # Fold "last": the CEST occurrence 00:00-00:45Z is left out.
    Row("berlin-fall-every-15-last", tz(BERLIN, minutes=[0, 15, 30, 45], dst_fold="last"),
        "2026-10-24T23:45",
        ["2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30", "2026-10-25T01:45",
         "2026-10-25T02:00"]),
    # 02:00 CEST, 02:00 CET, 03:00 CET.
    Row("berlin-fall-hourly", tz(BERLIN, cron="0 * * * *"), "2026-10-24T23:30",
        ["2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"]),
    # ---- America/New_York, spring 2026-03-08: 02:00 EST (-5) -> 03:00 EDT (-4) at 07:00Z.
    Row("ny-spring-shift", tz(NEW_YORK, hours=[2], minutes=[30]), "2026-03-07T12:00",
        ["2026-03-08T07:00", "2026-03-09T06:30"]),
    # 2026-03-07 02:00 EST = 07:00Z is before `after`; 03-08 skipped; 03-09 02:00 EDT = 06:00Z.
    Row("ny-spring-cron-skip", tz(NEW_YORK, cron="0 2 * * *", dst_gap="skip"), "2026-03-07T12:00",
        ["2026-03-09T06:00", "2026-03-10T06:00"]),
    # Sundays only: 2026-03-08 shifted to 07:00Z, 2026-03-15 02:30 EDT = 06:30Z.
    Row("ny-spring-cron-sunday", tz(NEW_YORK, cron="30 2 * * 0"), "2026-03-01T12:00",
        ["2026-03-08T07:00", "2026-03-15T06:30"]),
    # 01:00 EST = 06:00Z, 03:00 EDT = 07:00Z, 04:00 EDT = 08:00Z.
    Row("ny-spring-minutes-only", tz(NEW_YORK, minutes=[0]), "2026-03-08T05:30",
        ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"]),
    # ---- America/New_York, fall 2026-11-01: 02:00 EDT (-4) -> 01:00 EST (-5) at 06:00Z.
    # Wall 01:00-01:59 occurs at 05:00-05:59Z (EDT) and at 06:00-06:59Z (EST).
    Row("ny-fall-first", tz(NEW_YORK, hours=[1], minutes=[30]), "2026-10-31T12:00",
        ["2026-11-01T05:30", "2026-11-02T06:30"]),
    Row("ny-fall-last", tz(NEW_YORK, hours=[1], minutes=[30], dst_fold="last"), "2026-10-31T12:00",
        ["2026-11-01T06:30", "2026-11-02T06:30"]),
    Row("ny-fall-both-cron", tz(NEW_YORK, cron="0 1 * * *", dst_fold="both"), "2026-10-31T12:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-02T06:00"]),
    Row("ny-fall-first-several", tz(NEW_YORK, hours=[1], minutes=[0, 20, 40]), "2026-11-01T04:50",
        ["2026-11-01T05:00", "2026-11-01T05:20", "2026-11-01T05:40", "2026-11-02T06:00"]),
    # 02:00 EST (07:00Z) exists once: not ambiguous.
    Row("ny-fall-after-fold", tz(NEW_YORK, cron="0 2 * * *"), "2026-10-31T12:00",
        ["2026-11-01T07:00", "2026-11-02T07:00"]),
    # 01:00 EDT, 01:00 EST, 02:00 EST.
    Row("ny-fall-hourly", tz(NEW_YORK, cron="0 * * * *"), "2026-11-01T04:00",
        ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"]),
    # ---- Australia/Lord_Howe, fall 2026-04-05: 02:00 (+11) -> 01:30 (+10:30) at 2026-04-04T15:00Z.
    # Wall 01:30-01:59 occurs at 14:30-14:59Z (+11) and at 15:00-15:29Z (+10:30).
    # 01:45 first = 14:45Z; next day 2026-04-06 01:45 +10:30 = 2026-04-05T15:15Z.
    Row("lord-howe-fall-first", tz(LORD_HOWE, hours=[1], minutes=[45]), "2026-04-04T00:00",
        ["2026-04-04T14:45", "2026-04-05T15:15"]),
    Row("lord-howe-fall-last", tz(LORD_HOWE, hours=[1], minutes=[45], dst_fold="last"),
        "2026-04-04T00:00", ["2026-04-04T15:15", "2026-04-05T15:15"]),
    # 01:15 is before the fold: unique, so it fires even with fold "last".
    Row("lord-howe-fall-unambiguous", tz(LORD_HOWE, hours=[1], minutes=[15], dst_fold="last"),
        "2026-04-04T00:00", ["2026-04-04T14:15", "2026-04-05T14:45"]),
    # 01:30 (+11), 01:30 (+10:30), 02:00 (+10:30).
    Row("lord-howe-fall-every-30", tz(LORD_HOWE, cron="*/30 * * * *"), "2026-04-04T14:00",
        ["2026-04-04T14:30", "2026-04-04T15:00", "2026-04-04T15:30"]),
    Row("lord-howe-fall-every-30-first", tz(LORD_HOWE, cron="*/30 * * * *", dst_fold="first"),
        "2026-04-04T14:00", ["2026-04-04T14:30", "2026-04-04T15:30", "2026-04-04T16:00"]),
    # ---- Australia/Lord_Howe, spring 2026-10-04: 02:00 (+10:30) -> 02:30 (+11) at
    # 2026-10-03T15:30Z. Wall 02:00-02:29 does not exist that day.
    # 02:00 and 02:15 collapse at 15:30Z; 2026-10-05 02:00 +11 = 2026-10-04T15:00Z.
    Row("lord-howe-spring-collapse", tz(LORD_HOWE, hours=[2], minutes=[0, 15]),
        "2026-10-03T00:00", ["2026-10-03T15:30", "2026-10-04T15:00", "2026-10-04T15:15"]),
    # Shifted 02:00 and the real 02:30 are one instant: one firing.
    Row("lord-howe-spring-collapse-real-slot", tz(LORD_HOWE, hours=[2], minutes=[0, 30]),
        "2026-10-03T00:00", ["2026-10-03T15:30", "2026-10-04T15:00", "2026-10-04T15:30"]),
    # 02:30 exists (the gap is only 30 minutes), so "skip" does not affect it.
    Row("lord-howe-spring-half-past", tz(LORD_HOWE, hours=[2], minutes=[30], dst_gap="skip"),
        "2026-10-03T00:00", ["2026-10-03T15:30", "2026-10-04T15:30"]),
    Row("lord-howe-spring-skip", tz(LORD_HOWE, cron="15 2 * * *", dst_gap="skip"),
        "2026-10-03T00:00", ["2026-10-04T15:15", "2026-10-05T15:15"]),
    # 01:45 (+10:30), 02:30 (+11), 02:45 (+11).
    Row("lord-howe-spring-every-15", tz(LORD_HOWE, cron="*/15 * * * *"), "2026-10-03T15:00",
        ["2026-10-03T15:15", "2026-10-03T15:30", "2026-10-03T15:45"]),
    # ---- Pacific/Apia: 2011-12-29 23:59 (-10) -> 2011-12-31 00:00 (+14) at 2011-12-30T10:00Z;
    # 2011-12-30 did not exist. 29th 09:00 -10 = 19:00Z; the 30th's 09:00 shifts to 10:00Z;
    # 31st 09:00 +14 = 2011-12-30T19:00Z.
    Row("apia-daily-shift", tz(APIA, hours=[9], minutes=[0]), "2011-12-29T00:00",
        ["2011-12-29T19:00", "2011-12-30T10:00", "2011-12-30T19:00"]),
    Row("apia-daily-cron-shift", tz(APIA, cron="0 9 * * *"), "2011-12-29T00:00",
        ["2011-12-29T19:00", "2011-12-30T10:00", "2011-12-30T19:00"]),
    Row("apia-daily-skip", tz(APIA, hours=[9], minutes=[0], dst_gap="skip"), "2011-12-29T00:00",
        ["2011-12-29T19:00", "2011-12-30T19:00"]),
    # Real time: no 30th in Dec 2011; next is 2012-01-30 00:00 +14 = 2012-01-29T10:00Z.
    # (`after` = 2011-12-01 02:00 local, past the end of Nov 30.)
    Row("apia-dom-30-no-hours", tz(APIA, days_of_month=[30]), "2011-12-01T12:00",
        ["2012-01-29T10:00", "2012-01-29T10:01"]),
    # Hour-restricted: 2011-12-30 12:00 shifts to 10:00Z; 2012-01-30 12:00 +14 = 01-29T22:00Z.
    Row("apia-dom-30-noon", tz(APIA, days_of_month=[30], hours=[12], minutes=[0]),
        "2011-12-01T12:00", ["2011-12-30T10:00", "2012-01-29T22:00"]),
    # 23:00 (-10) on the 29th, then 00:00 (+14) on the 31st, one real hour later.
    Row("apia-hourly", tz(APIA, cron="0 * * * *"), "2011-12-30T08:30",
        ["2011-12-30T09:00", "2011-12-30T10:00", "2011-12-30T11:00"]),
    # ---- America/Santiago changes at local midnight. Spring 2026-09-06: 00:00 (-4) -> 01:00 (-3)
    # at 04:00Z; @daily on the 6th shifts to 01:00 -3 = 04:00Z.
    Row("santiago-daily-spring", tz(SANTIAGO, cron="@daily"), "2026-09-05T00:00",
        ["2026-09-05T04:00", "2026-09-06T04:00", "2026-09-07T03:00"]),
    # Fall 2026-04-05 03:00Z: 24:00 (-3) -> 23:00 (-4) on the 4th; 23:00 repeats (02:00Z, 03:00Z).
    Row("santiago-fall-23", tz(SANTIAGO, cron="0 23 * * *"), "2026-04-04T12:00",
        ["2026-04-05T02:00", "2026-04-06T03:00"]),
    # Midnight of the 5th occurs once (-4) = 04:00Z.
    Row("santiago-fall-daily", tz(SANTIAGO, cron="@daily"), "2026-04-04T00:00",
        ["2026-04-04T03:00", "2026-04-05T04:00", "2026-04-06T04:00"]),
    # ---- Asia/Kathmandu, +05:45 all year.
    Row("kathmandu-midnight", tz(KATHMANDU, hours=[0], minutes=[0]), "2026-01-01T00:00",
        ["2026-01-01T18:15", "2026-01-02T18:15"]),
    Row("kathmandu-hourly", tz(KATHMANDU, cron="0 * * * *"), "2026-01-01T00:00",
        ["2026-01-01T00:15", "2026-01-01T01:15", "2026-01-01T02:15"]),
    # ---- February 29th.
    Row("feb-29-cron", {"cron": "0 0 29 2 *"}, "2026-01-01T00:00",
        ["2028-02-29T00:00", "2032-02-29T00:00"], max_days=3000),
    # Strictly after: `after` is itself a fire time.
    Row("feb-29-strictly-after", {"cron": "0 0 29 2 *"}, "2028-02-29T00:00",
        ["2032-02-29T00:00"], max_days=1500),
    # OR rule: Feb 29th OR Mondays in February. Feb 2027 Mondays: 1, 8, 15, 22.
    Row("feb-29-or-monday-2027", {"cron": "0 0 29 2 1"}, "2026-03-01T00:00",
        ["2027-02-01T00:00", "2027-02-08T00:00", "2027-02-15T00:00", "2027-02-22T00:00",
         "2028-02-07T00:00"]),
    # Feb 2028 Mondays: 7, 14, 21, 28; the 29th is a Tuesday; Feb 2029's first Monday is the 5th.
    Row("feb-29-or-monday-2028", {"cron": "0 0 29 2 1"}, "2027-02-23T00:00",
        ["2028-02-07T00:00", "2028-02-14T00:00", "2028-02-21T00:00", "2028-02-28T00:00",
         "2028-02-29T00:00", "2029-02-05T00:00"]),
    # Calendar day 29: February 2027 has none; 2028 has one.
    Row("dom-29-calendar-2027", {"days_of_month": [29], "hours": [0], "minutes": [0]},
        "2027-01-30T00:00", ["2027-03-29T00:00", "2027-04-29T00:00"]),
    Row("dom-29-calendar-2028", {"days_of_month": [29], "hours": [0], "minutes": [0]},
        "2028-01-30T00:00", ["2028-02-29T00:00", "2028-03-29T00:00"]),
    # ---- The 31st skips Feb, Apr, Jun, Sep, Nov.
    Row("dom-31-calendar", {"days_of_month": [31], "hours": [12], "minutes": [0]},
        "2026-01-01T00:00",
        ["2026-01-31T12:00", "2026-03-31T12:00", "2026-05-31T12:00", "2026-07-31T12:00",
         "2026-08-31T12:00", "2026-10-31T12:00", "2026-12-31T12:00", "2027-01-31T12:00"]),
    Row("dom-31-cron", {"cron": "0 12 31 * *"}, "2026-01-01T00:00",
        ["2026-01-31T12:00", "2026-03-31T12:00", "2026-05-31T12:00", "2026-07-31T12:00",
         "2026-08-31T12:00", "2026-10-31T12:00", "2026-12-31T12:00", "2027-01-31T12:00"]),
    # Berlin midnight: CET (-1h) in Jan/Oct 31 (after fall-back)/Dec, CEST (-2h) Mar..Aug.
    Row("dom-31-berlin", tz(BERLIN, cron="0 0 31 * *"), "2026-01-01T00:00",
        ["2026-01-30T23:00", "2026-03-30T22:00", "2026-05-30T22:00", "2026-07-30T22:00",
         "2026-08-30T22:00", "2026-10-30T23:00", "2026-12-30T23:00"]),
    # ---- Friday the 13th (calendar: AND). 2026: Feb 13, Mar 13, Nov 13; 2027: Aug 13.
    Row("friday-13th", {"days_of_month": [13], "weekdays": ["friday"], "hours": [0],
                        "minutes": [0]}, "2026-03-14T00:00",
        ["2026-11-13T00:00", "2027-08-13T00:00"]),
    # Without hours/minutes it fires every minute of that day.
    Row("friday-13th-all-day", {"days_of_month": [13], "weekdays": ["friday"]},
        "2026-03-14T00:00", ["2026-11-13T00:00", "2026-11-13T00:01", "2026-11-13T00:02"]),
    # ---- Cron: day of month OR day of week when both are restricted.
    # 13th OR Friday. Fridays 03-20, 03-27, 04-03, 04-10, 04-17; 04-13 is a Monday.
    Row("cron-or", {"cron": "0 0 13 * 5"}, "2026-03-14T00:00",
        ["2026-03-20T00:00", "2026-03-27T00:00", "2026-04-03T00:00", "2026-04-10T00:00",
         "2026-04-13T00:00", "2026-04-17T00:00"]),
    Row("cron-or-names", {"cron": "0 0 13 * fri"}, "2026-03-14T00:00",
        ["2026-03-20T00:00", "2026-03-27T00:00", "2026-04-03T00:00"]),
    # 1-31/10 in day of month is restricted (1, 11, 21, 31) -> OR Mondays (03-02, 09, 16, 23, 30).
    Row("cron-or-step", {"cron": "0 0 1-31/10 * 1"}, "2026-03-01T00:00",
        ["2026-03-02T00:00", "2026-03-09T00:00", "2026-03-11T00:00", "2026-03-16T00:00",
         "2026-03-21T00:00", "2026-03-23T00:00", "2026-03-30T00:00", "2026-03-31T00:00",
         "2026-04-01T00:00"]),
    # */10 starts with '*': unrestricted as Vixie cron reads it, so the days AND: the 1st,
    # 11th, 21st or 31st that is a Monday.
    Row("cron-star-step-ands", {"cron": "0 0 */10 * 1"}, "2026-03-01T00:00",
        ["2026-05-11T00:00", "2026-06-01T00:00", "2026-08-31T00:00", "2026-09-21T00:00"]),
    # A whole range written out is restricted (POSIX): 1-31 OR Monday is every day.
    Row("cron-full-range-ors", {"cron": "0 12 1-31 * 1"}, "2026-03-03T00:00",
        ["2026-03-03T12:00", "2026-03-04T12:00", "2026-03-05T12:00"]),
    Row("cron-full-weekday-range-ors", {"cron": "0 12 13 * 0-6"}, "2026-03-03T00:00",
        ["2026-03-03T12:00", "2026-03-04T12:00", "2026-03-05T12:00"]),
    # '?' is croniter's '*': with it the other field alone decides.
    Row("cron-question-mark", {"cron": "0 0 ? * 5"}, "2026-03-14T00:00",
        ["2026-03-20T00:00", "2026-03-27T00:00"]),
    # Month still ANDs: June only; 13th OR Fridays (5, 12, 19, 26); June 2027's first Friday is 4th.
    Row("cron-or-month", {"cron": "0 0 13 6 5"}, "2026-03-14T00:00",
        ["2026-06-05T00:00", "2026-06-12T00:00", "2026-06-13T00:00", "2026-06-19T00:00",
         "2026-06-26T00:00", "2027-06-04T00:00"]),
    # Only one day field restricted: plain AND with '*'.
    Row("cron-dow-only", {"cron": "0 0 * * 5"}, "2026-03-14T00:00",
        ["2026-03-20T00:00", "2026-03-27T00:00"]),
    Row("cron-dom-only", {"cron": "0 0 13 * *"}, "2026-03-14T00:00",
        ["2026-04-13T00:00", "2026-05-13T00:00"]),
    # 7 is Sunday too (2026-03-15, 03-22).
    Row("cron-sunday-7", {"cron": "0 0 * * 7"}, "2026-03-14T00:00",
        ["2026-03-15T00:00", "2026-03-22T00:00"]),
    # ---- Interval: real time, anchored at the Unix epoch unless start_at is given.
    Row("interval-epoch-hour", {"interval_sec": 3600}, "2026-03-29T00:30",
        ["2026-03-29T01:00", "2026-03-29T02:00", "2026-03-29T03:00"]),
    Row("interval-strictly-after", {"interval_sec": 3600}, "2026-01-01T00:00",
        ["2026-01-01T01:00", "2026-01-01T02:00"]),
    # 2026-01-01T00:00Z = 20454 days = 2922 weeks after the epoch: divisible by 7 s.
    Row("interval-7s", {"interval_sec": 7}, "2026-01-01T00:00",
        ["2026-01-01T00:00:07", "2026-01-01T00:00:14"]),
    # start_at 2026-01-01T00:00:30+01:00 = 2025-12-31T23:00:30Z, in the future: fires at start.
    Row("interval-start-future", {"interval_sec": 90, "start_at": "2026-01-01T00:00:30+01:00"},
        "2025-12-31T00:00", ["2025-12-31T23:00:30", "2025-12-31T23:02:00", "2025-12-31T23:03:30"]),
    Row("interval-start-equal", {"interval_sec": 90, "start_at": "2026-01-01T00:00:30+01:00"},
        "2025-12-31T23:00:30", ["2025-12-31T23:02:00"]),
    # 3570 s after start: k = 40 -> start + 3600 s.
    Row("interval-start-middle", {"interval_sec": 90, "start_at": "2026-01-01T00:00:30+01:00"},
        "2026-01-01T00:00", ["2026-01-01T00:00:30", "2026-01-01T00:02:00"]),
    # 09:00+05:45 = 03:15Z daily, unaffected by anything.
    Row("interval-start-kathmandu", {"interval_sec": 86400,
                                     "start_at": "2026-03-01T09:00:00+05:45"},
        "2026-03-28T12:00", ["2026-03-29T03:15", "2026-03-30T03:15"]),
    Row("interval-start-z", {"interval_sec": 600, "start_at": "2026-05-01T00:00:00Z"},
        "2026-05-01T00:05", ["2026-05-01T00:10", "2026-05-01T00:20"]),
]
# fmt: on


def engine_chain(raw: dict[str, Any], after: datetime, count: int) -> list[datetime]:
    """Apply the engine's next_after repeatedly, up to `count` times."""
    schedule = parse_schedule(raw)
    out: list[datetime] = []
    current: datetime | None = after
    for _ in range(count):
        assert current is not None
        current = schedule.next_after(current)
        if current is None:
            break
        out.append(current)
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_engine_matches_table(row: Row) -> None:
    """The engine's successive next_after results equal the hand-computed instants."""
    got = engine_chain(row.raw, row.after_utc, len(row.expected))
    assert got == row.expected_utc
    assert all(t.tzinfo is UTC for t in got)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_engine_times_matches_table(row: Row) -> None:
    """ScheduleSet.times of a one-schedule set gives the same instants."""
    got = parse_schedules([row.raw]).times(row.after_utc, len(row.expected))
    assert got == row.expected_utc


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_reference_matches_table(row: Row) -> None:
    """The brute-force reference agrees with the hand-computed instants."""
    got = ref_times(row.raw, row.after_utc, len(row.expected), max_days=row.max_days)
    assert got == row.expected_utc


def test_every_15_minutes_fires_8_times_in_fall_back_night() -> None:
    """`*/15 * * * *` in Berlin fires 8 times in 2026-10-25T00:00Z..01:45Z."""
    window_start, window_end = z("2026-10-25T00:00"), z("2026-10-25T01:45")
    times = parse_schedules([tz(BERLIN, cron="*/15 * * * *")]).times(z("2026-10-24T23:00"), 20)
    in_window = [t for t in times if window_start <= t <= window_end]
    assert len(in_window) == 8
    assert in_window == [window_start + timedelta(minutes=15 * i) for i in range(8)]


def test_hour_restricted_fall_back_fires_once() -> None:
    """`0 2 * * *` in Berlin fires once on the fall-back day, at the CEST 02:00 (00:00Z)."""
    times = parse_schedules([tz(BERLIN, cron="0 2 * * *")]).times(z("2026-10-24T12:00"), 2)
    assert times == [z("2026-10-25T00:00"), z("2026-10-26T01:00")]


# ---- Never firing


@pytest.mark.parametrize(
    "raw",
    [
        {"cron": "0 0 30 2 *"},
        {"cron": "0 0 30 2 *", "timezone": BERLIN},
        {"cron": "0 0 30,31 2 *"},
        {"cron": "0 0 31 2,4,6,9,11 *"},
        {"cron": "* * 31 4 *", "timezone": LORD_HOWE},
    ],
    ids=["feb-30", "feb-30-berlin", "feb-30-31", "31-in-short-months", "apr-31-every-minute"],
)
def test_impossible_date_is_refused_as_never_firing(raw: dict[str, Any]) -> None:
    """A cron expression naming a date that never exists is a validation error at `cron`
    saying it never fires (it used to be accepted and never run), quickly."""
    started = time.monotonic()
    with pytest.raises(ValidationError) as caught:
        parse_schedules([raw])
    [error] = caught.value.errors
    assert error.path == "schedules[0].cron"
    assert "never fires" in error.reason
    # Generous bound: this is about not walking years of minutes, not about speed.
    assert time.monotonic() - started < 2.0


def test_impossible_date_with_weekday_fires_by_or_rule() -> None:
    """`0 0 30 2 1` is not impossible: it fires on Mondays in February (OR rule)."""
    got = parse_schedule({"cron": "0 0 30 2 1"}).next_after(z("2026-03-01T00:00"))
    assert got == z("2027-02-01T00:00")


# ---- Strictly after


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (z("2026-01-01T09:00"), z("2026-01-02T09:00")),  # equal to a fire time: excluded
        (z("2026-01-01T08:59:59.999999"), z("2026-01-01T09:00")),
        (z("2026-01-01T09:00:00.000001"), z("2026-01-02T09:00")),
        # 10:00 in Berlin (CET) is 09:00Z: equal to a fire time, in another zone.
        (datetime(2026, 1, 1, 10, 0, tzinfo=ZoneInfo(BERLIN)), z("2026-01-02T09:00")),
        (datetime(2026, 1, 1, 4, 0, tzinfo=ZoneInfo(NEW_YORK)), z("2026-01-02T09:00")),
        (datetime(2026, 1, 1, 3, 59, tzinfo=ZoneInfo(NEW_YORK)), z("2026-01-01T09:00")),
    ],
)
def test_strictly_after(after: datetime, expected: datetime) -> None:
    """A fire time equal to `after` is not returned; `after` may be in any zone."""
    schedule = parse_schedule({"hours": [9], "minutes": [0]})
    assert schedule.next_after(after) == expected
    assert ref_next_after({"hours": [9], "minutes": [0]}, after) == expected


def test_strictly_after_shifted_gap_firing() -> None:
    """After the shifted gap firing itself (Berlin 2026-03-29T01:00Z), the next day is next."""
    raw = tz(BERLIN, hours=[2], minutes=[30])
    assert parse_schedule(raw).next_after(z("2026-03-29T01:00")) == z("2026-03-30T00:30")


def test_strictly_after_first_fold_firing() -> None:
    """With fold "both", after the first 02:30 (00:30Z) comes the second (01:30Z)."""
    raw = tz(BERLIN, hours=[2], minutes=[30], dst_fold="both")
    assert parse_schedule(raw).next_after(z("2026-10-25T00:30")) == z("2026-10-25T01:30")


def test_result_is_utc() -> None:
    """Results are aware UTC datetimes whatever zone `after` and the schedule use."""
    after = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo(KATHMANDU))
    for raw in (
        tz(BERLIN, hours=[9], minutes=[0]),
        tz(NEW_YORK, cron="0 9 * * *"),
        {"interval_sec": 60},
    ):
        got = parse_schedule(raw).next_after(after)
        assert got is not None
        assert got.tzinfo is UTC
        assert got > after


# ---- Schedule sets: the earliest over the schedules


MIXED_SET = [
    tz(BERLIN, hours=[9], minutes=[0]),  # 09:00 CET = 08:00Z (before 03-29)
    tz(NEW_YORK, cron="0 9 * * *"),  # 09:00 EDT = 13:00Z (after 03-08)
    {"interval_sec": 86400, "start_at": "2026-01-01T12:00:00Z"},  # 12:00Z daily
]


def test_set_earliest_of_schedules() -> None:
    """A set's fire times interleave its schedules' fire times in order."""
    times = parse_schedules(MIXED_SET).times(z("2026-03-10T00:00"), 6)
    assert times == [
        z("2026-03-10T08:00"),
        z("2026-03-10T12:00"),
        z("2026-03-10T13:00"),
        z("2026-03-11T08:00"),
        z("2026-03-11T12:00"),
        z("2026-03-11T13:00"),
    ]
    assert ref_set_next_after(MIXED_SET, z("2026-03-10T08:00")) == z("2026-03-10T12:00")


def test_set_next_after_is_min() -> None:
    """ScheduleSet.next_after is the minimum of its schedules' next_after."""
    after = z("2026-03-10T08:30")
    expected = min(parse_schedule(raw).next_after(after) for raw in MIXED_SET)
    assert expected == z("2026-03-10T12:00")
    assert parse_schedules(MIXED_SET).next_after(after) == expected


def _never(day: int, month: int) -> CalendarSchedule:
    """A schedule of a date that does not exist (day `day` of `month`, 00:00 UTC): refused
    by validation now, but a task stored before may still hold one."""
    return CalendarSchedule(
        minutes=(0,),
        hours=(0,),
        days_of_month=(day,),
        months=(month,),
        weekdays=frozenset(range(7)),
        day_or=False,
        timezone=ZoneInfo("UTC"),
        dst_gap=DstGap.SHIFT,
        dst_fold=DstFold.FIRST,
        source={},
    )


def test_impossible_stored_date_returns_none_fast() -> None:
    """A schedule of a date that never exists (stored before validation refused it)
    returns None, quickly."""
    started = time.monotonic()
    assert _never(30, 2).next_after(z("2026-01-01T00:00")) is None
    assert time.monotonic() - started < 2.0


def test_set_ignores_never_firing_schedule() -> None:
    """A never-firing schedule in a set does not hide the others."""
    interval = parse_schedule({"interval_sec": 60})
    schedules = ScheduleSet((_never(30, 2), interval))
    assert schedules.next_after(z("2026-01-01T00:00:30")) == z("2026-01-01T00:01")


def test_set_of_never_firing_schedules() -> None:
    """A set whose schedules never fire returns None and an empty list of times."""
    schedules = ScheduleSet((_never(30, 2), _never(31, 4)))
    assert schedules.next_after(z("2026-01-01T00:00")) is None
    assert schedules.times(z("2026-01-01T00:00"), 5) == []


def test_set_coinciding_schedules_fire_once() -> None:
    """Two schedules firing at the same instant give one fire time, not two."""
    schedules = parse_schedules([{"cron": "0 * * * *"}, {"minutes": [0]}, {"interval_sec": 3600}])
    assert schedules.times(z("2026-01-01T00:00"), 3) == [
        z("2026-01-01T01:00"),
        z("2026-01-01T02:00"),
        z("2026-01-01T03:00"),
    ]


def test_default_timezone_applies() -> None:
    """Schedules without `timezone` use default_timezone; an explicit one wins."""
    schedules = parse_schedules([{"hours": [0], "minutes": [0]}], default_timezone=KATHMANDU)
    assert schedules.next_after(z("2026-01-01T00:00")) == z("2026-01-01T18:15")
    single = parse_schedule({"cron": "0 0 * * *"}, default_timezone=KATHMANDU)
    assert single.next_after(z("2026-01-01T00:00")) == z("2026-01-01T18:15")
    explicit = parse_schedule(tz("UTC", hours=[0], minutes=[0]), default_timezone=KATHMANDU)
    assert explicit.next_after(z("2026-01-01T00:00")) == z("2026-01-02T00:00")

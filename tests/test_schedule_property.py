"""Property tests: taskd.schedule agrees with the brute-force reference on random schedules.

Base times are drawn near the DST transitions of 2015..2035 (within 3 hours) of the
schedule's zone as well as uniformly. When the reference finds nothing within its bounded
walk, the engine must return None or an instant past that bound.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskd.schedule import parse_schedule, parse_schedules
from tests.schedule_reference import (
    DEFAULT_MAX_DAYS,
    WEEKDAY_NUMBERS,
    ref_next_after,
    ref_set_next_after,
)

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/Sao_Paulo",
    "Europe/London",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Tehran",
    "Pacific/Chatham",
    "UTC",
]
WEEKDAYS = list(WEEKDAY_NUMBERS)
FIRST = datetime(2015, 1, 1, tzinfo=UTC)
LAST = datetime(2036, 1, 1, tzinfo=UTC)
CHAIN = 5
ODD_OFFSET = timezone(timedelta(hours=-3, minutes=-7, seconds=-13))

# Hundreds of generated schedules checked against the reference: seconds in all.
pytestmark = pytest.mark.slow

SETTINGS = settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
CHAIN_SETTINGS = settings(SETTINGS, max_examples=100)


@functools.cache
def transitions(zone: str) -> tuple[datetime, ...]:
    """UTC instants (to the minute) where `zone` changes its offset, 2015..2035."""
    tz = ZoneInfo(zone)

    def offset(instant: datetime) -> timedelta | None:
        return instant.astimezone(tz).utcoffset()

    found: list[datetime] = []
    day = timedelta(days=1)
    instant = FIRST
    while instant < LAST:
        if offset(instant) != offset(instant + day):
            low, high = instant, instant + day  # offset(low) != offset(high)
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if middle <= low:
                    middle = low + timedelta(minutes=1)
                if offset(middle) == offset(low):
                    low = middle
                else:
                    high = middle
            found.append(high)
        instant += day
    return tuple(found)


@st.composite
def base_times(draw: st.DrawFn, zone: str) -> datetime:
    """An aware `after`: near one of `zone`'s transitions or uniform, in some zone."""
    near = transitions(zone)
    kind = draw(st.sampled_from(["near", "just-before", "uniform"]) if near else st.just("uniform"))
    if kind == "near":
        after = draw(st.sampled_from(near)) + timedelta(minutes=draw(st.integers(-180, 180)))
    elif kind == "just-before":  # no slot between `after` and the transition is likelier
        after = draw(st.sampled_from(near)) - timedelta(minutes=draw(st.integers(1, 60)))
    else:
        after = draw(st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(2035, 12, 31)))
        after = after.replace(tzinfo=UTC, second=0, microsecond=0)
    if draw(st.integers(0, 3)) == 0:  # sometimes off the minute grid
        after += timedelta(
            seconds=draw(st.integers(0, 59)), microseconds=draw(st.integers(0, 999_999))
        )
    # The same instant, expressed in UTC, the schedule's zone, another listed zone or a
    # fixed offset that is not a whole minute.
    shown_in = draw(st.sampled_from(["UTC", zone, *ZONES[:4], "odd"]))
    if shown_in == "odd":
        return after.astimezone(ODD_OFFSET)
    return after.astimezone(ZoneInfo(shown_in))


def int_sets(low: int, high: int, favourites: list[int], max_size: int) -> st.SearchStrategy:
    """Sorted non-empty lists of distinct ints in low..high, favouring some values."""
    element = st.one_of(st.sampled_from(favourites), st.integers(low, high))
    return st.sets(element, min_size=1, max_size=max_size).map(sorted)


MINUTES = int_sets(0, 59, [0, 15, 30, 45, 59], 6)
# Transition hours in the listed zones: 0 (Santiago, Sao Paulo), 1-3 (Europe, US, Australia).
HOURS = int_sets(0, 23, [0, 1, 2, 3, 23], 4)
DAYS_OF_MONTH = int_sets(1, 31, [1, 13, 28, 29, 30, 31], 12)


def maybe(strategy: st.SearchStrategy, absent_weight: int) -> st.SearchStrategy:
    """`strategy` or None (absent), None being `absent_weight` times as likely."""
    return st.one_of(*[st.none()] * absent_weight, strategy)


def policies() -> st.SearchStrategy:
    """Occasional dst_gap / dst_fold overrides."""
    return st.fixed_dictionaries(
        {},
        optional={
            "dst_gap": st.sampled_from(["shift", "skip"]),
            "dst_fold": st.sampled_from(["first", "last", "both"]),
        },
    ).flatmap(lambda d: st.sampled_from([{}, {}, d]))


@st.composite
def calendar_cases(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A random calendar schedule and a base time."""
    zone = draw(st.sampled_from(ZONES))
    raw: dict[str, Any] = {"timezone": zone}
    kind = draw(st.integers(0, 9))  # hours: 30% absent, 10% all 24 (= unrestricted)
    hours = None if kind < 3 else list(range(24)) if kind == 3 else draw(HOURS)
    values = {
        "minutes": draw(st.one_of(st.none(), MINUTES, MINUTES)),  # a third absent
        "hours": hours,
        # Days are restricted only sometimes, so most schedules fire at least daily.
        "days_of_month": draw(maybe(DAYS_OF_MONTH, 4)),
        "weekdays": draw(maybe(st.sets(st.sampled_from(WEEKDAYS), min_size=1).map(sorted), 4)),
    }
    raw.update({k: v for k, v in values.items() if v is not None})
    if len(raw) == 1:  # only the zone: an empty schedule is invalid, restrict minutes
        raw["minutes"] = draw(MINUTES)
    raw.update(draw(policies()))
    return raw, draw(base_times(zone))


def cron_field(
    draw: st.DrawFn, low: int, high: int, favourites: list[int], star_weight: int
) -> str:
    """One cron field: '*', a list, a range, a step, or the whole range written out (which
    restricts, as in POSIX cron, when the day of month and day of week are ORed)."""
    kind = draw(st.sampled_from(["*"] * star_weight + ["list", "list", "range", "step", "whole"]))
    if kind == "*":
        return "*"
    if kind == "whole":
        return draw(st.sampled_from([f"{low}-{high}", f"{low}-{high}/1", "*/1"]))
    if kind == "list":
        return ",".join(str(v) for v in draw(int_sets(low, high, favourites, 5)))
    if kind == "range":
        start = draw(st.integers(low, high - 1))
        end = draw(st.integers(start, min(high, start + (high - low) - 1)))
        return f"{start}-{end}"
    step = draw(st.integers(2, max(2, (high - low) // 2)))
    start = draw(st.one_of(st.just(None), st.integers(low, high)))
    return f"*/{step}" if start is None else f"{start}-{high}/{step}"


@st.composite
def cron_cases(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A random cron schedule built from random field sets, and a base time."""
    zone = draw(st.sampled_from(ZONES))
    if draw(st.integers(0, 9)) == 0:
        expression = draw(st.sampled_from(["@hourly", "@daily", "@midnight", "@weekly"]))
    else:
        minute = cron_field(draw, 0, 59, [0, 15, 30, 45], 1)
        hour = cron_field(draw, 0, 23, [0, 1, 2, 3, 23], 2)
        dom = cron_field(draw, 1, 31, [1, 13, 29, 30, 31], 6)
        month = cron_field(draw, 1, 12, [2, 3, 4, 9, 10, 11], 8)
        dow = cron_field(draw, 0, 6, [0, 5, 6], 6)
        if dow != "*" and draw(st.integers(0, 4)) == 0:
            dow = draw(st.sampled_from(["7", "mon-fri", "sun", "5-7", "sat,sun"]))
        expression = f"{minute} {hour} {dom} {month} {dow}"
    raw: dict[str, Any] = {"cron": expression, "timezone": zone}
    raw.update(draw(policies()))
    return raw, draw(base_times(zone))


def engine_chain(raw: dict[str, Any], after: datetime, count: int) -> list[datetime | None]:
    """Up to `count` successive engine results, ending at the first None."""
    schedule = parse_schedule(raw)
    out: list[datetime | None] = []
    current = after
    for _ in range(count):
        found = schedule.next_after(current)
        out.append(found)
        if found is None:
            break
        current = found
    return out


def assert_agrees(raw: dict[str, Any], after: datetime, count: int) -> None:
    """The engine's chain of `count` next_after results equals the reference's."""
    got = engine_chain(raw, after, count)
    current = after
    for index, found in enumerate(got):
        expected = ref_next_after(raw, current)
        context = f"{raw} after={current.astimezone(UTC).isoformat()} step={index}"
        if expected is None:
            # Nothing within the reference's bound: the engine may only go past it.
            assert found is None or found > current + timedelta(days=DEFAULT_MAX_DAYS), context
            return
        assert found == expected, context
        assert found.tzinfo is UTC, context
        current = found
    assert len(got) == count


@SETTINGS
@given(calendar_cases())
def test_calendar_next_after_matches_reference(case: tuple[dict[str, Any], datetime]) -> None:
    """Calendar schedules: next_after equals the reference."""
    raw, after = case
    assert_agrees(raw, after, 1)


@SETTINGS
@given(cron_cases())
def test_cron_next_after_matches_reference(case: tuple[dict[str, Any], datetime]) -> None:
    """Cron schedules: next_after equals the reference."""
    raw, after = case
    assert_agrees(raw, after, 1)


@CHAIN_SETTINGS
@given(calendar_cases())
def test_calendar_chain_matches_reference(case: tuple[dict[str, Any], datetime]) -> None:
    """Calendar schedules: five successive next_after results equal the reference's."""
    raw, after = case
    assert_agrees(raw, after, CHAIN)


@CHAIN_SETTINGS
@given(cron_cases())
def test_cron_chain_matches_reference(case: tuple[dict[str, Any], datetime]) -> None:
    """Cron schedules: five successive next_after results equal the reference's."""
    raw, after = case
    assert_agrees(raw, after, CHAIN)


@st.composite
def interval_cases(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A random interval schedule (with or without start_at) and a base time."""
    seconds = draw(
        st.one_of(
            st.integers(1, 120),
            st.integers(1, 10**7),
            st.sampled_from([60, 900, 3600, 86400, 604800]),
        )
    )
    raw: dict[str, Any] = {"interval_sec": seconds}
    if draw(st.booleans()):
        start = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)))
        offset = timedelta(minutes=15 * draw(st.integers(-48, 56)))
        start = start.replace(microsecond=0, tzinfo=timezone(offset))
        text = start.isoformat()
        if offset == timedelta(0) and draw(st.booleans()):
            text = text.replace("+00:00", "Z")
        raw["start_at"] = text
    after = draw(st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2041, 1, 1)))
    return raw, after.replace(tzinfo=UTC).astimezone(ZoneInfo(draw(st.sampled_from(ZONES))))


@SETTINGS
@given(interval_cases())
def test_interval_chain_matches_reference(case: tuple[dict[str, Any], datetime]) -> None:
    """Interval schedules: five successive next_after results equal start + k * N."""
    raw, after = case
    assert_agrees(raw, after, CHAIN)


@CHAIN_SETTINGS
@given(
    st.lists(st.one_of(calendar_cases(), cron_cases(), interval_cases()), min_size=1, max_size=3)
)
def test_set_is_earliest_of_reference(cases: list[tuple[dict[str, Any], datetime]]) -> None:
    """A ScheduleSet's next_after is the earliest of the reference's over its schedules."""
    raws = [raw for raw, _ in cases]
    after = cases[0][1]
    expected = ref_set_next_after(raws, after)
    got = parse_schedules(raws).next_after(after)
    if expected is None:
        assert got is None or got > after + timedelta(days=DEFAULT_MAX_DAYS)
    else:
        assert got == expected


@settings(SETTINGS, max_examples=40)
@given(st.one_of(calendar_cases(), cron_cases()))
def test_reference_acceleration_is_exact(case: tuple[dict[str, Any], datetime]) -> None:
    """Self-check: the reference's skipping walk equals its plain minute-by-minute walk."""
    raw, after = case
    fast = ref_next_after(raw, after, max_days=2)
    slow = ref_next_after(raw, after, max_days=2, accelerate=False)
    assert fast == slow


def test_transitions_found() -> None:
    """Self-check: the transition finder sees Berlin's 2026 changes at 01:00Z."""
    berlin = transitions("Europe/Berlin")
    assert datetime(2026, 3, 29, 1, 0, tzinfo=UTC) in berlin
    assert datetime(2026, 10, 25, 1, 0, tzinfo=UTC) in berlin
    assert len(berlin) == 42  # two a year, 2015..2035
    assert transitions("UTC") == ()

"""Validation of raw schedules: every problem is reported, with its exact attribute path."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskd.errors import FieldError, ValidationError
from taskd.schedule import ScheduleSet, parse_schedule, parse_schedules

AFTER = datetime(2026, 1, 1, tzinfo=UTC)


def fires_within_a_year(schedule: Any) -> bool:
    """Whether a parsed schedule fires strictly after AFTER and within a year."""
    found = schedule.next_after(AFTER)
    return found is not None and AFTER < found <= AFTER + timedelta(days=366)


def errors_of(raw: Any, **kwargs: Any) -> list[FieldError]:
    """The FieldErrors parse_schedules raises for `raw` (fails if it does not raise)."""
    with pytest.raises(ValidationError) as info:
        parse_schedules(raw, **kwargs)
    errors = info.value.errors
    assert errors, "a ValidationError carries at least one FieldError"
    assert all(isinstance(e, FieldError) for e in errors)
    return errors


def only_error(raw: Any) -> FieldError:
    """The single FieldError reported for `raw`."""
    errors = errors_of(raw)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


# ---- The messages the contract spells out


def test_hour_out_of_range_exact_message() -> None:
    """An hour of 24 in the second schedule reads `schedules[1].hours[2]: 24 is not in 0..23`."""
    error = only_error([{"hours": [1]}, {"hours": [0, 1, 24]}])
    assert error.path == "schedules[1].hours[2]"
    assert str(error) == "schedules[1].hours[2]: 24 is not in 0..23"


def test_unknown_time_zone_exact_message() -> None:
    """A misspelt zone reads `schedules[0].timezone: unknown time zone 'Europe/Berln'`, and
    suggests the zone it most likely meant (issue 9.8)."""
    error = only_error([{"hours": [9], "timezone": "Europe/Berln"}])
    assert str(error) == (
        "schedules[0].timezone: unknown time zone 'Europe/Berln'; did you mean 'Europe/Berlin'?"
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"hours": [9], "timezone": "europe/berlin"},
        {"cron": "0 9 * * *", "timezone": "EUROPE/BERLIN"},
    ],
    ids=["calendar", "cron"],
)
def test_time_zone_in_another_case_is_stored_canonical(raw: dict[str, Any]) -> None:
    """A zone name that differs only in case is that zone, kept in its canonical spelling."""
    schedule = parse_schedule(raw)
    assert schedule.to_json()["timezone"] == "Europe/Berlin"
    assert schedule == parse_schedule({**raw, "timezone": "Europe/Berlin"})


def test_misspelt_criterion_is_one_error_with_a_suggestion() -> None:
    """`{"hour": [9]}` is a typo, not an empty schedule: one error, "did you mean 'hours'"."""
    error = only_error([{"hour": [9]}])
    assert error.path == "schedules[0].hour"
    assert error.reason.startswith("unknown field; did you mean 'hours'?")


def test_misspelt_weekday_suggests_the_name() -> None:
    """A misspelt calendar weekday suggests the closest name."""
    error = only_error([{"weekdays": ["wensday"]}])
    assert error.reason.endswith("did you mean 'wednesday'?")


def test_str_of_validation_error_lists_every_problem() -> None:
    """str(ValidationError) joins every `path: reason`; it is also a ValueError."""
    with pytest.raises(ValueError, match=r"schedules\[0\]\.hours\[0\]: 24 is not in 0\.\.23"):
        parse_schedules([{"hours": [24]}])


# ---- Calendar values out of range or of the wrong type


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"hours": [-1]}, "schedules[0].hours[0]", ["-1", "0..23"]),
        ({"minutes": [0, 60]}, "schedules[0].minutes[1]", ["60", "0..59"]),
        ({"minutes": [-5]}, "schedules[0].minutes[0]", ["-5", "0..59"]),
        ({"days_of_month": [0]}, "schedules[0].days_of_month[0]", ["0", "1..31"]),
        ({"days_of_month": [1, 32]}, "schedules[0].days_of_month[1]", ["32", "1..31"]),
        ({"weekdays": ["monday", "funday"]}, "schedules[0].weekdays[1]", ["funday"]),
        ({"weekdays": ["fr"]}, "schedules[0].weekdays[0]", ["fr"]),
        ({"weekdays": [5]}, "schedules[0].weekdays[0]", ["5"]),
    ],
    ids=[
        "hour-negative",
        "minute-60",
        "minute-negative",
        "day-0",
        "day-32",
        "weekday-funday",
        "weekday-two-letters",
        "weekday-number",
    ],
)
def test_calendar_value_out_of_range(raw: dict[str, Any], path: str, words: list[str]) -> None:
    """A value outside its range is reported at its list index, naming the value."""
    error = only_error([raw])
    assert error.path == path
    for word in words:
        assert word in error.reason


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"hours": [1, True]}, "schedules[0].hours[1]"),
        ({"minutes": [False]}, "schedules[0].minutes[0]"),
        ({"hours": ["3"]}, "schedules[0].hours[0]"),
        ({"hours": [2.5]}, "schedules[0].hours[0]"),
        ({"days_of_month": [None]}, "schedules[0].days_of_month[0]"),
        ({"hours": 3}, "schedules[0].hours"),
        ({"weekdays": "monday"}, "schedules[0].weekdays"),
        ({"minutes": {"0": 1}}, "schedules[0].minutes"),
    ],
    ids=[
        "bool-true-in-hours",
        "bool-false-in-minutes",
        "string-in-hours",
        "float-in-hours",
        "null-in-days",
        "hours-not-a-list",
        "weekdays-a-string",
        "minutes-a-dict",
    ],
)
def test_calendar_wrong_type(raw: dict[str, Any], path: str) -> None:
    """Non-integers (bools included) and non-lists are refused at their exact path."""
    assert only_error([raw]).path == path


@pytest.mark.parametrize("key", ["hours", "minutes", "days_of_month", "weekdays"])
def test_empty_list(key: str) -> None:
    """An empty criterion list is refused at the key, saying it is empty."""
    error = only_error([{key: []}])
    assert error.path == f"schedules[0].{key}"
    assert "empty" in error.reason


def test_empty_schedule() -> None:
    """`{}` is refused as a whole, at the schedule's own path."""
    error = only_error([{}])
    assert error.path == "schedules[0]"
    assert "empty" in error.reason


def test_timezone_alone_is_empty() -> None:
    """A schedule with only a timezone has no criterion: refused."""
    assert only_error([{"timezone": "Europe/Berlin"}]).path == "schedules[0]"


@pytest.mark.parametrize("raw", ["daily", 3, None, ["hours"]], ids=["str", "int", "null", "list"])
def test_schedule_not_an_object(raw: Any) -> None:
    """A schedule that is not an object is refused at its index."""
    assert only_error([{"minutes": [0]}, raw]).path == "schedules[1]"


def test_schedules_not_a_list() -> None:
    """The schedules themselves must be a list."""
    assert only_error({"hours": [1]}).path == "schedules"


def test_unknown_key() -> None:
    """An unknown key is refused at its own path, naming it unknown."""
    error = only_error([{"hours": [1], "colour": "red"}])
    assert error.path == "schedules[0].colour"
    assert "unknown" in error.reason


@pytest.mark.parametrize("zone", ["Europe/Berln", "Mars/Olympus", "CEST+2", "../etc/passwd"])
def test_unknown_time_zone(zone: str) -> None:
    """Zones that are not IANA names are refused at `timezone`, naming the zone."""
    error = only_error([{"hours": [1], "timezone": zone}])
    assert error.path == "schedules[0].timezone"
    assert f"{zone!r}" in error.reason


def test_empty_time_zone() -> None:
    """An empty timezone string is refused at `timezone`."""
    assert only_error([{"hours": [1], "timezone": ""}]).path == "schedules[0].timezone"


def test_time_zone_not_a_string() -> None:
    """A non-string timezone is refused at `timezone`."""
    assert only_error([{"hours": [1], "timezone": 1}]).path == "schedules[0].timezone"


@pytest.mark.parametrize(
    ("key", "value"),
    [("dst_gap", "maybe"), ("dst_gap", True), ("dst_fold", "middle"), ("dst_fold", "FIRST")],
)
def test_bad_dst_policy(key: str, value: Any) -> None:
    """dst_gap must be shift|skip and dst_fold first|last|both."""
    assert only_error([{"hours": [2], key: value}]).path == f"schedules[0].{key}"


@pytest.mark.parametrize(
    ("raw"),
    [
        {"hours": [2], "dst_gap": "skip", "dst_fold": "last"},
        {"minutes": [0], "dst_gap": "shift", "dst_fold": "first"},
        {"cron": "0 2 * * *", "dst_gap": "skip", "dst_fold": "both"},
        {
            "hours": list(range(24)),
            "weekdays": [
                *("sunday", "monday", "tuesday", "wednesday"),
                *("thursday", "friday", "saturday"),
            ],
        },
        {"days_of_month": [1, 31], "minutes": [0, 59], "hours": [0, 23], "timezone": "UTC"},
    ],
    ids=["calendar-overrides", "real-time-overrides", "cron-overrides", "all-values", "bounds"],
)
def test_valid_calendar_and_overrides_parse(raw: dict[str, Any]) -> None:
    """Well-formed calendar/cron schedules, with any dst overrides, are accepted."""
    assert fires_within_a_year(parse_schedule(raw))


# ---- Cron


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 0 L * *", r"L"),
        ("0 0 15W * *", r"W"),
        ("0 0 LW * *", r"LW"),
        ("0 0 * * 5#3", r"#"),
        ("0 0 * * 5L", r"5L"),
        ("H 0 * * *", r"H"),
        ("H(0-29) * * * *", r"H"),
        ("0 0 0 * * *", r"\b6\b|\b5\b|five|six"),
        ("0 0 0 * * * 2030", r"\b7\b|\b5\b|five|seven"),
        ("@reboot", r"@reboot"),
        ("* * * *", r"\b4\b|\b5\b|four|five"),
        ("61 * * * *", r"61|range"),
        ("* 24 * * *", r"24|range"),
        ("* * 32 * *", r"32|range"),
        ("* * * 13 *", r"13|range"),
        ("* * * * 8", r"8|range"),
        ("*/0 * * * *", r"0|step"),
        ("* * * * funday", r"funday"),
        ("every day", r"\b2\b|\b5\b|field"),
        ("", r"\b0\b|\b5\b|empty|field"),
    ],
    ids=[
        "L",
        "W",
        "LW",
        "hash",
        "last-weekday",
        "H",
        "H-range",
        "6-fields",
        "7-fields",
        "reboot",
        "4-fields",
        "minute-61",
        "hour-24",
        "day-32",
        "month-13",
        "weekday-8",
        "step-0",
        "bad-name",
        "words",
        "empty",
    ],
)
def test_bad_cron(expression: str, reason: str) -> None:
    """Cron that taskd cannot evaluate exactly is refused at `cron`, naming why."""
    error = only_error([{"cron": expression}])
    assert error.path == "schedules[0].cron"
    assert re.search(reason, error.reason), error.reason


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("*/15 8-18 * * tues-fri", "day of week: 'tues' is not a name cron knows; use tue-fri"),
        ("0 0 * sept,march *", "month: 'sept' is not a name cron knows; use sep,mar"),
        ("0 0 * * funday", "day of week: 'funday' is not a name cron knows; did you mean 'sun'?"),
        ("61 * * * *", "minute: 61 is not in 0..59"),
        ("0 24 * * *", "hour: 24 is not in 0..23"),
        ("0 0 0 * *", "day of month: 0 is not in 1..31"),
        ("0 0 * 13 *", "month: 13 is not in 1..12"),
        ("0 0 * * 8", "day of week: 8 is not in 0..7"),
        ("61 24 * * *", "minute: 61 is not in 0..59; hour: 24 is not in 0..23"),
        ("5-5/0 * * * *", "minute: step 0 in '5-5/0' never advances; use a step of 1 or more"),
        ("0 0 * * 1-5/0", "day of week: step 0 in '1-5/0' never advances"),
        ("0 0 L * *", "day of month: 'L' uses an extension taskd cannot evaluate exactly"),
        ("H * * * *", "minute: 'H' uses an extension"),
        ("mon * * * *", "minute: 'mon' is not a number (names are for month and day of week)"),
        ("1-2-3 * * * *", "minute: '1-2-3' is not a number, a name, a range or a step"),
        ("1,,2 * * * *", "minute: '1,,2' has an empty item"),
        ("\u00b2 * * * *", "minute: '\u00b2' is not a number, a name, a range or a step"),
    ],
)
def test_cron_refusal_names_the_field(expression: str, reason: str) -> None:
    """A refused cron field is named, with its value and what to write instead (issue 9.7)."""
    error = only_error([{"cron": expression}])
    assert error.path == "schedules[0].cron"
    assert error.reason.startswith(f"invalid cron expression {expression!r}: {reason}"), error


@pytest.mark.parametrize(
    ("weekdays", "stored"),
    [
        (["mon", "fri"], ["monday", "friday"]),
        (["Friday", "MON", "monday"], ["monday", "friday"]),
        (["sun", "SAT"], ["saturday", "sunday"]),
    ],
)
def test_calendar_weekdays_take_cron_names_in_any_case(
    weekdays: list[str], stored: list[str]
) -> None:
    """Calendar weekdays take `mon` as well as `monday`, in any case, and keep the long
    lowercase form the API renders (issue 9.7)."""
    schedule = parse_schedule({"weekdays": weekdays, "hours": [9], "minutes": [0]})
    assert schedule.to_json()["weekdays"] == stored
    assert schedule == parse_schedule({"weekdays": stored, "hours": [9], "minutes": [0]})


def test_cron_takes_names_in_any_case() -> None:
    """Cron's names work in any case, as in cron."""
    assert parse_schedule({"cron": "0 9 * JAN-Mar Mon-FRI"}) == parse_schedule(
        {"cron": "0 9 * 1-3 1-5"}
    )


@pytest.mark.parametrize(
    ("spelt_out", "cron_names"),
    [
        ("*/15 8-18 * * monday-friday", "*/15 8-18 * * mon-fri"),
        ("0 0 * January,march *", "0 0 * jan,mar *"),
        ("0 9 * * SUNDAY", "0 9 * * sun"),
    ],
)
def test_cron_takes_spelt_out_names_in_any_case(spelt_out: str, cron_names: str) -> None:
    """Cron takes `monday` as well as `mon` (and calendar schedules take both too), in any
    case: the two spellings give the same fire times (issue 9.7)."""
    after = datetime(2026, 3, 1, tzinfo=UTC)
    long_form = parse_schedule({"cron": spelt_out, "timezone": "UTC"})
    short_form = parse_schedule({"cron": cron_names, "timezone": "UTC"})
    assert ScheduleSet(schedules=(long_form,)).times(after, 20) == ScheduleSet(
        schedules=(short_form,)
    ).times(after, 20)
    assert long_form.to_json()["cron"] == spelt_out  # stored as written


def test_cron_not_a_string() -> None:
    """A non-string cron is refused at `cron`."""
    assert only_error([{"cron": 5}]).path == "schedules[0].cron"


@pytest.mark.parametrize(
    "expression",
    [
        "30 2 * * 1-5",
        "*/15 * * * *",
        "0 0 1,15 jan-jun mon-fri",
        "0 9-17/2 * * sun",
        "0 0 * * 7",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ],
)
def test_valid_cron_parses(expression: str) -> None:
    """Standard 5-field cron with names, ranges, steps and @-aliases is accepted."""
    schedule = parse_schedule({"cron": expression, "timezone": "Europe/Berlin"})
    assert fires_within_a_year(schedule)


@pytest.mark.parametrize(
    "raw",
    [
        {"cron": "0 2 * * *", "hours": [2]},
        {"cron": "0 2 * * *", "minutes": [0]},
        {"cron": "0 2 * * *", "weekdays": ["monday"]},
        {"cron": "0 2 * * *", "days_of_month": [1]},
    ],
    ids=["hours", "minutes", "weekdays", "days_of_month"],
)
def test_cron_mixed_with_calendar_keys(raw: dict[str, Any]) -> None:
    """Combining `cron` with a calendar key is refused, naming both."""
    errors = errors_of([raw])
    calendar_key = next(k for k in raw if k != "cron")
    assert all(e.path.startswith("schedules[0]") for e in errors)
    text = "; ".join(str(e) for e in errors)
    assert "cron" in text
    assert calendar_key in text


@pytest.mark.parametrize(
    "raw",
    [
        {"interval_sec": 60, "hours": [2]},
        {"interval_sec": 60, "cron": "* * * * *"},
    ],
    ids=["interval-and-hours", "interval-and-cron"],
)
def test_interval_mixed_with_other_kinds(raw: dict[str, Any]) -> None:
    """An interval combined with calendar or cron keys is refused."""
    errors = errors_of([raw])
    assert all(e.path.startswith("schedules[0]") for e in errors)


# ---- Interval


@pytest.mark.parametrize(
    "value",
    [0, -60, 1.5, "60", True, None, 60.0],
    ids=["zero", "negative", "fraction", "string", "bool", "null", "float"],
)
def test_bad_interval(value: Any) -> None:
    """interval_sec must be an integer >= 1 (bools and floats refused)."""
    error = only_error([{"interval_sec": value}])
    assert error.path == "schedules[0].interval_sec"


def test_interval_zero_names_the_bound() -> None:
    """interval_sec 0 is refused with a reason that names the lower bound."""
    error = only_error([{"interval_sec": 0}])
    assert re.search(r">= ?1|at least 1|positive|greater than (or equal to )?0|1\.\.", error.reason)


@pytest.mark.parametrize(
    "start_at",
    ["2026-01-01T00:00:00", "2026-01-01", "tomorrow", "", 1767225600, "2026-13-01T00:00:00Z"],
    ids=["no-offset", "date-only", "words", "empty", "number", "month-13"],
)
def test_bad_start_at(start_at: Any) -> None:
    """start_at must be an RFC 3339 date-time with an offset."""
    error = only_error([{"interval_sec": 60, "start_at": start_at}])
    assert error.path == "schedules[0].start_at"


def test_start_at_without_offset_says_so() -> None:
    """A start_at without offset is refused with a reason about the missing offset/zone."""
    error = only_error([{"interval_sec": 60, "start_at": "2026-01-01T00:00:00"}])
    assert re.search(r"offset|zone|aware", error.reason, re.IGNORECASE)


@pytest.mark.parametrize(
    "start_at",
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+05:45", "2026-01-01T00:00:00-03:00"],
)
def test_valid_start_at(start_at: str) -> None:
    """RFC 3339 start_at with Z or a numeric offset is accepted."""
    assert fires_within_a_year(parse_schedule({"interval_sec": 60, "start_at": start_at}))


@pytest.mark.parametrize("key", ["dst_gap", "timezone", "hours"])
def test_interval_refuses_wall_clock_keys(key: str) -> None:
    """Interval schedules have no wall-clock keys: dst_gap / timezone / hours are refused."""
    value = {"dst_gap": "skip", "timezone": "UTC", "hours": [1]}[key]
    errors = errors_of([{"interval_sec": 60, key: value}])
    assert any(key in str(e) for e in errors)


# ---- Several problems, paths, parse_schedule


def test_all_problems_reported() -> None:
    """Every problem across several schedules is reported, each at its own path."""
    raw = [
        {"hours": [24, 3, 25], "minutes": [60], "timezone": "Mars/Olympus"},
        {"cron": "0 0 L * *"},
        {},
        {"interval_sec": 0},
        {"minutes": [], "weekdays": ["funday"]},
    ]
    paths = {e.path for e in errors_of(raw)}
    assert paths == {
        "schedules[0].hours[0]",
        "schedules[0].hours[2]",
        "schedules[0].minutes[0]",
        "schedules[0].timezone",
        "schedules[1].cron",
        "schedules[2]",
        "schedules[3].interval_sec",
        "schedules[4].minutes",
        "schedules[4].weekdays[0]",
    }


def test_every_bad_list_item_reported() -> None:
    """Each bad item of one list gets its own error."""
    errors = errors_of([{"hours": [24, -1, True, 5, "x"]}])
    assert [e.path for e in errors] == [
        "schedules[0].hours[0]",
        "schedules[0].hours[1]",
        "schedules[0].hours[2]",
        "schedules[0].hours[4]",
    ]


def test_parse_schedules_custom_path() -> None:
    """parse_schedules(path=...) prefixes every error path."""
    errors = errors_of([{"hours": [24]}], path="tasks[3].schedules")
    assert [str(e) for e in errors] == ["tasks[3].schedules[0].hours[0]: 24 is not in 0..23"]


def test_parse_schedule_paths() -> None:
    """parse_schedule reports paths relative to `path` (empty by default)."""
    with pytest.raises(ValidationError) as info:
        parse_schedule({"hours": [1, 2, 24]})
    assert [str(e) for e in info.value.errors] == ["hours[2]: 24 is not in 0..23"]
    with pytest.raises(ValidationError) as info:
        parse_schedule({"hours": [24]}, path="schedules[7]")
    assert [str(e) for e in info.value.errors] == ["schedules[7].hours[0]: 24 is not in 0..23"]


def test_bad_default_timezone_is_refused() -> None:
    """A schedule falling back on an unknown default_timezone is refused."""
    with pytest.raises(ValidationError):
        parse_schedules([{"hours": [1]}], default_timezone="Nowhere/Land")


@pytest.mark.parametrize(
    "expression", ["0 0 *,31 * *", "*,5 * * * *", "0 0 * jan,* *", "0 0 * * *,mon"]
)
def test_a_star_within_a_cron_list_is_the_whole_field(expression: str) -> None:
    """`*,31` is every day (it was a 500: croniter keeps the `*` among the numbers)."""
    [schedule] = parse_schedules([{"cron": expression}]).schedules
    every = parse_schedules([{"cron": "* * * * *"}]).schedules[0]
    fields = expression.split()
    for index, name in enumerate(("minutes", "hours", "days_of_month", "months", "weekdays")):
        if "*" in fields[index].split(","):
            assert getattr(schedule, name) == getattr(every, name)

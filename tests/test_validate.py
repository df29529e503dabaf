"""The shared checks: paths, collected errors, "did you mean"."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pytest

from taskd.errors import FieldError, ValidationError
from taskd.validate import (
    Fields,
    choice,
    describe,
    integer,
    json_value,
    list_of,
    string,
    suggest,
    unknown_field_reason,
)


def errors_of(check: Any, value: Any, path: str = "x") -> list[str]:
    """The `path: reason` strings `check` raises for `value` (fails if it does not)."""
    with pytest.raises(ValidationError) as info:
        check(value, path)
    return [str(error) for error in info.value.errors]


@pytest.mark.parametrize(
    ("name", "known", "expected"),
    [
        ("max_runing", ["max_running", "timezone"], "max_running"),
        ("schedule", ["schedules", "name"], "schedules"),
        ("nope", ["notes", "token"], None),  # sharing a few letters is not a typo
        ("cc", ["recipients"], None),
        ("anything", [], None),
        ("europe/berln", ["Europe/Berlin", "Europe/Bern"], "Europe/Berlin"),  # any case
        ("Hours", ["hours", "minutes"], "hours"),
        # As close to tasks/create as to tasks/update: no guess.
        ("tasks/delete", ["tasks/create", "tasks/update", "tasks/destroy"], None),
    ],
)
def test_suggest(name: str, known: list[str], expected: str | None) -> None:
    """suggest() names the known name a typo most likely meant, or nothing."""
    assert suggest(name, known) == expected


def test_unknown_field_reason_lists_the_keys_sorted() -> None:
    """The reason carries the hint, then every allowed key in order."""
    assert unknown_field_reason("scope", ["scopes", "name", "key_file"]) == (
        "unknown field; did you mean 'scopes'? expected one of: key_file, name, scopes"
    )
    assert unknown_field_reason("cc", ["recipients"]) == (
        "unknown field; expected one of: recipients"
    )


def test_choice_suggests_a_close_value() -> None:
    """A misspelt choice value gets a "did you mean" after the allowed values (issue 9.8)."""
    assert errors_of(choice(["skip", "queue"]), "skp") == [
        "x: must be one of 'skip', 'queue', got the string 'skp'; did you mean 'skip'?"
    ]
    assert errors_of(choice(["skip", "queue"]), "never") == [
        "x: must be one of 'skip', 'queue', got the string 'never'"
    ]


def test_fields_collects_every_problem_and_the_unknown_keys() -> None:
    """Fields reads on after a refused value and reports unread keys on close()."""
    fields = Fields({"a": "x", "b": -1, "c": 1}, "t")
    assert fields.get("a", integer(), 7) == 7
    assert fields.get("b", integer(minimum=0), 0) == 0
    assert fields.require("d", string()) is None
    with pytest.raises(ValidationError) as info:
        fields.close()
    assert info.value.errors == [
        FieldError("t.a", "must be an integer, got the string 'x'"),
        FieldError("t.b", "must be an integer >= 0, got -1"),
        FieldError("t.d", "is required"),
        FieldError("t.c", "unknown field; expected one of: a, b, d"),
    ]


def test_list_of_reports_each_item_and_duplicates() -> None:
    """Every bad item has its own path; with unique, a repeat names the first."""
    assert errors_of(list_of(integer(), unique=True), [1, "a", 1]) == [
        "x[1]: must be an integer, got the string 'a'",
        "x[2]: duplicate of x[0]",
    ]


def test_json_value_copies_and_refuses_each_non_json_part() -> None:
    """A deep copy; NaN, dates and other objects are refused at their own paths."""
    source = {"a": [1, {"b": None}]}
    copy = json_value(source, "p")
    assert copy == source
    assert copy["a"] is not source["a"]
    assert errors_of(json_value, {"n": [math.inf], "d": date(2026, 1, 1), "s": {1}}, "p") == [
        "p.n[0]: must be a finite number, got inf",
        "p.d: TOML dates and times are not JSON; write '2026-01-01' as a string",
        "p.s: must be a JSON value, got a set",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (1.5, "the number 1.5"),
        ("s", "the string 's'"),
        ("x" * 61, "a long string"),
        ([], "an array"),
        ({}, "an object"),
        (date(2026, 1, 1), "the TOML date/time 2026-01-01"),
        ({1}, "a set"),
    ],
)
def test_describe(value: Any, expected: str) -> None:
    """describe() names a refused value the same way for every caller."""
    assert describe(value) == expected

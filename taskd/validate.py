"""The one way taskd checks input: checks that collect `FieldError`s with their paths.

A check is a function `(value, path) -> converted value` that raises `ValidationError` (with
one or more errors at or below `path`) when it refuses the value. `Fields` reads the keys of
one object with such checks, collecting every problem instead of stopping at the first, and
reports the keys it never read as unknown, with a "did you mean" from `suggest`.

Used by the config loader, the task-definition validator, the schedule parser and module
params, so that a refused value reads the same wherever it was given. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from taskd.errors import FieldError, ValidationError, join_path

__all__ = [
    "Check",
    "Fields",
    "NotJson",
    "array_of_tables",
    "boolean",
    "choice",
    "collect",
    "describe",
    "did_you_mean",
    "fail",
    "integer",
    "json_copy",
    "json_object",
    "json_value",
    "list_of",
    "member",
    "number",
    "string",
    "suggest",
    "table",
    "unknown_field_reason",
    "unknown_name_reason",
]

T = TypeVar("T")
D = TypeVar("D")
E = TypeVar("E", bound=StrEnum)
# A check validates one value found at a path and returns it converted; it raises
# ValidationError (possibly with several errors below that path) when the value is refused.
Check = Callable[[Any, str], T]

# How alike a name must be to a known one to be suggested (difflib's ratio, 0..1): close
# enough to be a typo, not merely sharing a few letters.
_SUGGEST_CUTOFF = 0.7


def fail(path: str, reason: str) -> NoReturn:
    """Refuse the value at `path` for `reason`."""
    raise ValidationError.single(path, reason)


def describe(value: Any) -> str:
    """Name a refused value for a message: its type, and the value if it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 60 else "a long string"
    if isinstance(value, datetime | date | time):
        return f"the TOML date/time {value.isoformat()}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def suggest(name: str, known: Iterable[str]) -> str | None:
    """Return the known name `name` is most likely a typo of, or None if none is close.

    Case is ignored in the comparison (`europe/berln` -> `Europe/Berlin`), and the known
    name is returned as it is spelt. None, too, when two known names are equally close
    (`tasks/delete` is as close to `tasks/create` as to `tasks/update`): a guess between
    them would mislead as often as it helps.
    """
    spelling: dict[str, str] = {}
    for item in known:
        spelling.setdefault(item.casefold(), item)
    folded = name.casefold()
    close = difflib.get_close_matches(folded, list(spelling), n=2, cutoff=_SUGGEST_CUTOFF)
    if not close:
        return None
    if len(close) == 2 and _likeness(folded, close[0]) == _likeness(folded, close[1]):
        return None
    return spelling[close[0]]


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the known name closest to `name`, or `""` if none is."""
    close = suggest(name, known)
    return f"; did you mean {close!r}?" if close is not None else ""


def unknown_field_reason(key: str, known: Collection[str]) -> str:
    """The reason an unknown key is refused: a suggestion, then every key allowed there."""
    close = suggest(key, known)
    hint = f"did you mean {close!r}? " if close is not None else ""
    return f"unknown field; {hint}expected one of: {', '.join(sorted(known))}"


def unknown_name_reason(noun: str, name: str, known: Iterable[str]) -> str:
    """The reason a name that refers to something (a module) is refused: a suggestion, then
    every known name."""
    names = sorted(known)
    close = suggest(name, names)
    hint = f" did you mean {close!r}?" if close is not None else ""
    return f"unknown {noun} {name!r};{hint} known {noun}s: {', '.join(names) or 'none'}"


def collect(items: Iterable[tuple[str, Any]], check: Check[T]) -> list[T]:
    """Run `check` on each (path, value); return the results or raise with every error."""
    errors: list[FieldError] = []
    result: list[T] = []
    for item_path, item in items:
        try:
            result.append(check(item, item_path))
        except ValidationError as error:
            errors.extend(error.errors)
    if errors:
        raise ValidationError(errors)
    return result


# ---------------------------------------------------------------------------------------
# Reading one object


class Fields:
    """Reads the keys of one table, collecting errors instead of stopping at the first.

    Every key read is remembered; `close()` reports the others as unknown, then raises one
    ValidationError with everything found, if anything was.
    """

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self._raw = raw
        self._path = path
        self._read: list[str] = []
        self._errors: list[FieldError] = []

    @classmethod
    def of(cls, value: Any, path: str) -> Fields:
        """Start reading `value`, which must be a table."""
        return cls(table(value, path), path)

    def get(self, key: str, check: Check[T], default: T) -> T:
        """Return the checked value of `key`, or `default` when absent or invalid."""
        self._read.append(key)
        if key not in self._raw:
            return default
        return self.check(key, check, self._raw[key], default)

    def require(self, key: str, check: Check[T]) -> T | None:
        """Like `get`, but a missing key is an error; None when missing or invalid."""
        self._read.append(key)
        if key not in self._raw:
            self.error(key, "is required")
            return None
        return self.check(key, check, self._raw[key], None)

    def check(self, key: str, check: Check[T], value: Any, default: D) -> T | D:
        """Run `check` on `value` as if found at `key`; on failure record it, return `default`."""
        try:
            return check(value, join_path(self._path, key))
        except ValidationError as error:
            self._errors.extend(error.errors)
            return default

    def error(self, key: str, reason: str) -> None:
        """Record a problem at `key` (a path below this table)."""
        self._errors.append(FieldError(join_path(self._path, key), reason))

    @property
    def errors(self) -> list[FieldError]:
        """The problems found so far, unknown keys aside."""
        return list(self._errors)

    def unknown_keys(self) -> list[FieldError]:
        """Return the errors so far plus one per key that was never read (call it once)."""
        for key in self._raw:
            if key not in self._read:
                self.error(str(key), unknown_field_reason(str(key), self._read))
        return self._errors

    def close(self) -> None:
        """Raise ValidationError if any problem was found, unknown keys included."""
        errors = self.unknown_keys()
        if errors:
            raise ValidationError(errors)


# ---------------------------------------------------------------------------------------
# Checks: (value, path) -> converted value, or ValidationError


def table(value: Any, path: str) -> dict[str, Any]:
    """An object (a TOML table); returns a shallow copy."""
    if not isinstance(value, Mapping):
        fail(path, f"must be an object (a TOML table), got {describe(value)}")
    return dict(value)


def array_of_tables(header: str, item_check: Check[T] | None = None) -> Check[list[Any]]:
    """Check an array (of tables, each checked by `item_check` when given)."""

    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            fail(path, f"must be an array of tables ({header}), got {describe(value)}")
        if item_check is None:
            return list(value)
        return list(list_of(item_check)(value, path))

    return check


def string(*, allow_empty: bool = False) -> Check[str]:
    """A string, by default not empty."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            fail(path, f"must be a string, got {describe(value)}")
        if not value and not allow_empty:
            fail(path, "must not be empty")
        return value

    return check


def boolean(value: Any, path: str) -> bool:
    """true or false (not 0 or 1)."""
    if not isinstance(value, bool):
        fail(path, f"must be true or false, got {describe(value)}")
    return value


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Check[int]:
    """An integer (not a bool, not a float), within the inclusive bounds given."""

    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, f"must be an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            fail(path, f"must be an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            fail(path, f"must be an integer <= {maximum}, got {value}")
        return value

    return check


def number(
    *, minimum: float, exclusive: bool = False, maximum: float | None = None
) -> Check[float]:
    """A finite number (int or float, not a bool) >= `minimum` (> with `exclusive`)."""

    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(path, f"must be a number, got {describe(value)}")
        if not math.isfinite(value):
            fail(path, f"must be a finite number, got {value}")
        if value < minimum or (exclusive and value == minimum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            fail(path, f"must be a number {bound}, got {value:g}")
        if maximum is not None and value > maximum:
            fail(path, f"must be a number <= {maximum:g}, got {value:g}")
        return float(value)

    return check


def choice(allowed: Collection[str]) -> Check[str]:
    """One of the strings `allowed`."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
            fail(path, f"must be one of {options}, got {describe(value)}{hint}")
        return value

    return check


def member(enum_type: type[E]) -> Check[E]:
    """The value of a member of `enum_type`; returns the member."""

    def check(value: Any, path: str) -> E:
        return enum_type(choice([item.value for item in enum_type])(value, path))

    return check


def list_of(item_check: Check[T], *, unique: bool = False) -> Check[tuple[T, ...]]:
    """Check an array item by item, collecting the errors of every item."""

    def check(value: Any, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            fail(path, f"must be an array, got {describe(value)}")
        errors: list[FieldError] = []
        items: list[T] = []
        first_index: dict[T, int] = {}
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            try:
                converted = item_check(item, item_path)
            except ValidationError as error:
                errors.extend(error.errors)
                continue
            if unique:
                if converted in first_index:
                    reason = f"duplicate of {path}[{first_index[converted]}]"
                    errors.append(FieldError(item_path, reason))
                first_index.setdefault(converted, index)
            items.append(converted)
        if errors:
            raise ValidationError(errors)
        return tuple(items)

    return check


def json_object(value: Any, path: str) -> dict[str, Any]:
    """An object holding only JSON values; returns a deep copy (see `json_value`)."""
    table(value, path)
    result: dict[str, Any] = json_value(value, path)
    return result


def json_value(value: Any, path: str) -> Any:
    """Return a deep copy of `value`, refusing what JSON cannot hold (TOML dates, NaN).

    These values are stored and served as JSON; refusing them here beats failing later.
    Every refused part is reported at its own path below `path`.
    """
    copy, problems = json_copy(value, path)
    if problems:
        raise ValidationError([FieldError(p.path, p.reason()) for p in problems])
    return copy


@dataclass(frozen=True, slots=True)
class NotJson:
    """A part of a value that JSON cannot hold: `culprit`, found at `path`.

    `kind` is `"number"` (NaN or an infinity), `"key"` (an object key that is not a
    string), `"date"` (a TOML date or time) or `"value"` (anything else).
    """

    path: str
    kind: str
    culprit: Any

    def reason(self) -> str:
        """Why the part is refused, said at its own path."""
        if self.kind == "number":
            return f"must be a finite number, got {self.culprit}"
        if self.kind == "key":
            return f"object key {self.culprit!r} is not a string"
        if self.kind == "date":
            iso = self.culprit.isoformat()
            return f"TOML dates and times are not JSON; write {iso!r} as a string"
        return f"must be a JSON value, got {describe(self.culprit)}"


def json_copy(value: Any, path: str) -> tuple[Any, list[NotJson]]:
    """Return a deep copy of `value` and every part of it that JSON cannot hold, in order."""
    problems: list[NotJson] = []
    copy = _json_copy(value, path, problems)
    return copy, problems


def _json_copy(value: Any, path: str, problems: list[NotJson]) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(NotJson(path, "number", value))
        return value
    if isinstance(value, list):
        return [_json_copy(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(NotJson(path, "key", key))
                continue
            copy[key] = _json_copy(item, join_path(path, key), problems)
        return copy
    problems.append(
        NotJson(path, "date" if isinstance(value, datetime | date | time) else "value", value)
    )
    return None

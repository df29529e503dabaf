"""The exact input schemas of taskd's own OpenAPI document: task bodies (both dialects),
schedules, the preview request, the v2 list filters.

The seed specs type these loosely (Nodeum's `task` has no `task_module`, fylr's schedule no
cron); taskd's document describes what its validators accept, built from the constants
those validators use (and each module's params from its own declarations, see
`taskd.modules.params_schema`), so that a schema-valid request is accepted and a
schema-invalid one refused. What no JSON Schema can say is listed in `SEMANTIC_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from taskd.definition import LIVE_FIELDS
from taskd.model import FILE_OPTIONS, MAX_PARALLEL, CatchUp, Overlap
from taskd.modules.params_schema import WHITESPACE, params_schema
from taskd.preview import MAX_COUNT
from taskd.schedule import MAX_INTERVAL_SEC, MAX_SCHEDULES, WEEKDAY_NAMES, DstFold, DstGap
from taskd.taskspec import MAX_RETRIES, MAX_RETRY_DELAY_SEC, WORKFLOW_ACTIONS, WORKFLOW_TYPES

__all__ = [
    "SEMANTIC_RULES",
    "ModuleInfo",
    "cron_pattern",
    "input_schemas",
    "list_filter_parameters",
]

# (module name, its param definitions, a description of the rules beyond them or None).
ModuleInfo = tuple[str, list[dict[str, Any]], str | None]

# The few rules of taskd's validators that no JSON Schema expresses, by the field path a 422
# (v2) or 400 (v1) names (a regex over `details`' keys / `errors[].path`) and a regex over
# the reason given, with why. The fuzz test accepts a refusal of schema-valid input only
# when every error it names matches one of these; the document says the same in prose.
SEMANTIC_RULES: tuple[tuple[str, str, str], ...] = (
    (
        r"(^|\.|\])cron$",
        r"never fires|invalid cron expression",
        "a cron expression whose pattern-valid fields give no date (day 31 of February only) "
        "or a range croniter refuses (reversed)",
    ),
    (
        r"(^|\.|\])(start_at|next_run_at|after)$",
        r"outside the years 1\.\.9999",
        "an RFC 3339 time whose UTC instant falls outside the years 1..9999",
    ),
    (
        r"(^|\.|\])next_run_at$",
        r"contradicts enabled",
        "`next_run_at: null` (do not run) with `enabled: true`",
    ),
    (
        r"(^|\.|\])task_params(\.|\[|$)|(^|\.)workflow_action$",
        r".",
        "a module's rules across its params (`check_params`, `check_task`: described on each "
        "module's variant), a secret `{file}` that must exist and be private, and in an "
        "update the params checked against the stored task's module",
    ),
    (
        r"^(created_at|updated_at)$",
        r"RFC 3339|outside the years",
        "a list filter's time on a day its month does not have (02-30), or outside the "
        "years 1..9999 in UTC",
    ),
    (
        r"(^|\.|\])_id$",
        r"^no task",
        "a v1 update naming a task that does not exist (or is another owner's)",
    ),
)


def _ci(word: str) -> str:
    """`word` as a regex matching it in any case (JSON Schema regexes have no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS_LONG = (
    *("january", "february", "march", "april", "may", "june", "july"),
    *("august", "september", "october", "november", "december"),
)
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAYS_LONG = ("sunday", *WEEKDAY_NAMES[:-1])
# ASCII digits only: taskd refuses other Unicode digits, which a regex's \d would match.
_STEP = "/0*[1-9][0-9]*"


def _cron_field(value: str, names: Iterable[str] = (), *, any_day: bool = False) -> str:
    words = sorted({*names}, key=len, reverse=True)
    one = "|".join([value, *(_ci(word) for word in words)])
    bases = [r"\*", f"(?:{one})(?:-(?:{one}))?"]
    if any_day:
        bases.append(r"\?")
    item = f"(?:{'|'.join(bases)})(?:{_STEP})?"
    return f"{item}(?:,{item})*"


@cache
def cron_pattern() -> str:
    """A regex of the cron expressions taskd's syntax check passes: five fields of numbers
    in range, names, `*`, `?` (days only), ranges, lists and steps; or an alias."""
    fields = [
        _cron_field("0*[0-5]?[0-9]"),
        _cron_field("0*(?:1?[0-9]|2[0-3])"),
        _cron_field("0*(?:[1-9]|[12][0-9]|3[01])", any_day=True),
        _cron_field("0*(?:[1-9]|1[0-2])", (*_MONTHS, *_MONTHS_LONG)),
        _cron_field("0*[0-7]", (*_DAYS, *_DAYS_LONG), any_day=True),
    ]
    aliases = "|".join(_ci(alias) for alias in _CRON_ALIASES)
    five = f"[{WHITESPACE}]+".join(fields)
    return rf"^[{WHITESPACE}]*(?:{aliases}|{five})[{WHITESPACE}]*$"


_TIME = {"type": "string", "format": "date-time"}
_ZONE = {"$ref": "#/components/schemas/taskd_timezone"}
_DST = {
    "dst_gap": {"type": "string", "enum": [member.value for member in DstGap]},
    "dst_fold": {"type": "string", "enum": [member.value for member in DstFold]},
}


def _criterion(low: int, high: int) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": {"type": "integer", "minimum": low, "maximum": high},
    }


_WEEKDAY = {
    "type": "string",
    "pattern": "^(?:"
    + "|".join(_ci(n) for n in (*WEEKDAY_NAMES, *(n[:3] for n in WEEKDAY_NAMES)))
    + ")$",
}
_CALENDAR = {
    "type": "object",
    "additionalProperties": False,
    "description": "Fires at second 0 of each local minute every given criterion matches.",
    "properties": {
        "minutes": _criterion(0, 59),
        "hours": _criterion(0, 23),
        "days_of_month": _criterion(1, 31),
        "weekdays": {"type": "array", "minItems": 1, "items": _WEEKDAY},
        "timezone": _ZONE,
        **_DST,
    },
    "anyOf": [{"required": [key]} for key in ("minutes", "hours", "days_of_month", "weekdays")],
}
_INTERVAL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["interval_sec"],
    "properties": {
        "interval_sec": {"type": "integer", "minimum": 1, "maximum": MAX_INTERVAL_SEC},
        "start_at": _TIME,
    },
}


def _cron() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["cron"],
        "properties": {
            "cron": {
                "type": "string",
                "pattern": cron_pattern(),
                "description": "Standard 5-field cron (names, ranges, lists, steps) or an "
                "alias; 'L', 'W', '#' and 'H' are refused. A pattern-valid expression that "
                "never fires (`0 0 31 2 *`) is still refused (422).",
            },
            "timezone": _ZONE,
            **_DST,
        },
    }


def _schedules() -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": MAX_SCHEDULES,
        "items": {"$ref": "#/components/schemas/taskd_schedule"},
    }


_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "priority": {"type": "integer"},
        "overlap": {"type": "string", "enum": [m.value for m in Overlap]},
        "catch_up": {"type": "string", "enum": [m.value for m in CatchUp]},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
        "retry_delay_sec": {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": MAX_RETRY_DELAY_SEC,
        },
        **{
            key: (
                {"type": "string", "enum": list(kind)}
                if isinstance(kind, tuple)
                else {"type": "boolean"}
                if kind is bool
                else {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL}
            )
            for key, kind in FILE_OPTIONS.items()
        },
    },
}
_EMAIL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "recipients": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["email"],
                "properties": {
                    "email": {
                        "type": "string",
                        "pattern": rf'^[^@{WHITESPACE},;<>"]+@[^@{WHITESPACE},;<>"]+$',
                    },
                    "problems_only": {"type": "boolean"},
                },
            },
        }
    },
}
_METADATA = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "task": {"type": "object", "additionalProperties": True},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_OBJECT = {"type": "object", "additionalProperties": True}
_IGNORED = {"description": "Kept by the server: ignored in a request."}


def _definition_properties() -> dict[str, Any]:
    """The fields of a task definition both dialects accept (taskspec.validate_task_spec),
    plus those the server keeps and ignores in a request."""
    return {
        **{key: dict(_IGNORED) for key in sorted(LIVE_FIELDS)},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
        "description": {"type": "string"},
        "task_timeout_sec": {"type": "integer", "minimum": 0},
        "schedules": _schedules(),
        "next_run_at": {**_TIME, "nullable": True, "description": "null: do not run."},
        "enabled": {"type": "boolean"},
        "options": _OPTIONS,
        "email": _EMAIL,
        "frontend_prefs": _OBJECT,
        "workflow_type": {"type": "string", "enum": list(WORKFLOW_TYPES)},
        "workflow_action": {"type": "string", "enum": list(WORKFLOW_ACTIONS)},
        "metadata": _METADATA,
    }


def _variant(
    base: Mapping[str, Any], module: ModuleInfo | None, required: list[str]
) -> dict[str, Any]:
    properties = dict(base)
    if module is None:
        properties["task_params"] = {
            **_OBJECT,
            "description": "Checked against the module the task keeps (422 at its path).",
        }
        description = "Without `task_module`: the task keeps its module."
    else:
        name, defs, rules = module
        properties["task_module"] = {"type": "string", "enum": [name]}
        properties["task_params"] = params_schema(defs)
        if "required" in properties["task_params"]:
            required = [*required, "task_params"]  # absent params are {}: missing ones
        description = f"A `{name}` task."
        if rules:
            description += f" Beyond its params' schema: {rules}"
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "description": description,
    }
    if required:  # an empty `required` is not valid OpenAPI 3.0
        schema["required"] = required
    return schema


def _body(
    prefix: str,
    base: Mapping[str, Any],
    modules: list[ModuleInfo],
    required: list[str],
    partial: bool,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    """A body as `oneOf` one variant per module, discriminated by `task_module`; a partial
    update may leave the module out (one more variant)."""
    refs = {}
    for module in modules:
        component = f"{prefix}_{module[0]}"
        schemas[component] = _variant(base, module, [*required, "task_module"])
        refs[module[0]] = f"#/components/schemas/{component}"
    one_of: list[dict[str, Any]] = [{"$ref": ref} for ref in refs.values()]
    if partial:
        schemas[f"{prefix}_same_module"] = _variant(base, None, required)
        one_of.append({"$ref": f"#/components/schemas/{prefix}_same_module"})
        return {"oneOf": one_of}
    return {"oneOf": one_of, "discriminator": {"propertyName": "task_module", "mapping": refs}}


def input_schemas(modules: list[ModuleInfo]) -> dict[str, Any]:
    """The components of the exact inputs: `taskd_schedule`, `taskd_timezone`, the task
    bodies (`taskd_task_v2_create`, `taskd_task_v2_update`, `taskd_task_v1_item`) with
    one variant per module, `taskd_preview_request`."""
    schemas: dict[str, Any] = {
        "taskd_timezone": {
            "type": "string",
            "enum": sorted(available_timezones()),
            "description": "An IANA zone name of this machine's database (any case).",
        },
        "taskd_schedule": {"oneOf": [_CALENDAR, _cron(), _INTERVAL]},
    }
    v2 = {
        **_definition_properties(),
        "comment": {"type": "string", "description": "Nodeum's name of `description`."},
        "id": dict(_IGNORED),
        "user": dict(_IGNORED),
    }
    schemas["taskd_task_v2_create"] = _body(
        "taskd_task_v2_create", v2, modules, ["name"], False, schemas
    )
    update = {**v2, "version": {"type": "integer", "description": "The current version + 1."}}
    schemas["taskd_task_v2_update"] = _body(
        "taskd_task_v2_update", update, modules, [], True, schemas
    )
    v1 = {
        **_definition_properties(),
        "comment": dict(_IGNORED),
        "_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
        "version": {"type": "integer", "description": "The current version + 1 (updates)."},
    }
    v1_new = {key: value for key, value in v1.items() if key != "_id"}
    v1_new["version"] = dict(_IGNORED)
    new_task = _body("taskd_task_v1_new", v1_new, modules, [], False, schemas)
    changed = _body("taskd_task_v1_update", v1, modules, ["_id", "version"], True, schemas)
    schemas["taskd_task_v1_item"] = {
        "type": "object",
        "required": ["task"],
        "additionalProperties": True,
        "description": "fylr's wrapped task (`_user` and other keys beside `task` ignored); "
        "with `_id` an update (`version` required), else a new task.",
        "properties": {"task": {"oneOf": [new_task, changed]}},
    }
    schemas["taskd_preview_request"] = {
        "type": "object",
        "required": ["schedules"],
        "additionalProperties": False,
        "properties": {
            "schedules": _schedules(),
            "count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT, "default": 10},
            "after": {**_TIME, "description": "Default: now."},
            "timezone": {
                **_ZONE,
                "description": "Where schedules without a zone are read; default: the daemon's.",
            },
        },
    }
    return schemas


_DATE = r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# An RFC 3339 date-time (without an offset: UTC), or a date (its UTC midnight).
_QUERY_TIME = rf"{_DATE}(?:[T ]{_CLOCK}{_OFFSET}?)?"
# A task id as the list filter reads one: ASCII digits, not 0, at most 19 of them.
_SPACE = f"[{WHITESPACE}]*"
_QUERY_ID = rf"{_SPACE}(?![0-9]{{20}})0*[1-9][0-9]{{0,17}}{_SPACE}"


def list_filter_parameters(sortable: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The exact schemas of `GET /api/v2/tasks`' query parameters, by name."""
    names = "|".join(re.escape(name) for name in sorted(sortable, key=len, reverse=True))
    order = rf"{_SPACE}(?:(?:{names})(?::(?:asc|desc))?)?{_SPACE}"
    return {
        "limit": {"type": "integer", "minimum": 0, "maximum": 1000},
        "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
        "id": {
            "type": "string",
            "pattern": rf"^(?:{_SPACE},)*{_QUERY_ID}(?:,(?:{_QUERY_ID}|{_SPACE}))*$",
            "description": "Comma-separated ids (`1,2,3`).",
        },
        "sort_by": {
            "type": "string",
            "pattern": rf"^{order}(?:\|{order})*$",
            "description": "Attributes separated by `|`, each optionally with `:asc` (the "
            f"default) or `:desc`; sortable: {', '.join(sorted(sortable))}.",
        },
        "created_at": {
            "type": "string",
            "pattern": rf"^(?:>=|<=|>|<)?{_QUERY_TIME}$",
            "description": "An RFC 3339 time (a date: its UTC midnight), exactly or after "
            "one of `>`, `>=`, `<`, `<=`.",
        },
        "updated_at": {
            "type": "string",
            "pattern": rf"^(?:>=|<=|>|<)?{_QUERY_TIME}$",
            "description": "As `created_at`.",
        },
    }

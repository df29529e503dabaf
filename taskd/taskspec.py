"""The task-definition validator: a config `[[task]]` or an API body -> `TaskSpec`.

One validator for every front end (config file, both API dialects, `taskd ctl`), below the
core that uses it: it imports only errors, model, schedule and validate. Unknown keys are
errors except inside the opaque JSON values (`task_params`, `frontend_prefs`, `metadata`),
so a typo never passes silently. A task's params are checked against its module by the
core, which knows the modules.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from taskd.errors import FieldError, ValidationError, join_path
from taskd.model import (
    FILE_OPTIONS,
    MAX_PARALLEL,
    CatchUp,
    EmailRecipient,
    Overlap,
    TaskOptions,
    TaskSpec,
)
from taskd.schedule import ScheduleSet, parse_instant, parse_schedules
from taskd.validate import (
    Check,
    Fields,
    boolean,
    choice,
    describe,
    fail,
    integer,
    json_object,
    list_of,
    member,
    number,
    string,
    unknown_name_reason,
)

__all__ = [
    "MAX_RETRIES",
    "MAX_RETRY_DELAY_SEC",
    "WORKFLOW_ACTIONS",
    "WORKFLOW_TYPES",
    "check_name",
    "email_address",
    "is_valid_name",
    "task_header_lines",
    "task_paths",
    "validate_task_spec",
]

# The enums of the Nodeum spec: a task stored with another value would make every v2
# response about it invalid against the spec. They live here, with the validator that
# refuses other values, and not with the v2 dialect: the API is a higher layer, and this
# module sits below the core.
WORKFLOW_TYPES = (
    "active_archive",
    "offline_archive",
    "data_exchange",
    "data_migration",
    "maintenance",
    "data_enrichment",
)
WORKFLOW_ACTIONS = (
    "copy",
    "move",
    "erase",
    "scan",
    "rehydratation",
    "format",
    "check_consistency",
    "duplication",
    "cache_cleaning",
    "ejection",
    "get_index",
    "full_backup",
    "incremental_backup",
    "restore",
    "speedtest",
)
MAX_RETRIES = 100
MAX_RETRY_DELAY_SEC = 86_400.0  # the first delay; doubled delays are capped by the scheduler
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_NAME_RULE = "1 to 100 characters from A-Z a-z 0-9 _ . -"
# Characters that would break a `To:` header or smuggle a second recipient in.
_EMAIL = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+")


def validate_task_spec(
    raw: Mapping[str, Any],
    *,
    path: str,
    default_timezone: str,
    known_modules: Collection[str] | None = None,
) -> TaskSpec:
    """Validate one task definition (a config `[[task]]` or an API body) into a `TaskSpec`.

    `path` prefixes every error path (`""` for an API body). `default_timezone` must be a
    valid IANA name; schedules without a `timezone` are evaluated in it, but keep no zone in
    their JSON form, so that a change of the default reaches them when they are parsed again.
    With `known_modules`, an unknown `task_module` is an error. An explicit `next_run_at`
    of None (JSON `null`, "do not run") gives a disabled task. Raises `ValidationError`
    listing every problem.
    """
    fields = Fields.of(raw, path)
    task_name = fields.require("name", check_name)
    module = fields.require("task_module", _module_name(known_modules))
    description = fields.get("description", string(allow_empty=True), "")
    params: dict[str, Any] = fields.get("task_params", json_object, {})
    timeout = fields.get("task_timeout_sec", integer(minimum=0), 0)
    schedules = fields.get("schedules", _schedules(default_timezone), ScheduleSet())
    next_run_at = fields.get("next_run_at", _optional_instant, None)
    enabled = fields.get("enabled", boolean, None)
    options = fields.get("options", _task_options, TaskOptions())
    recipients: tuple[EmailRecipient, ...] = fields.get("email", _email, ())
    frontend_prefs: dict[str, Any] = fields.get("frontend_prefs", json_object, {})
    workflow_type = fields.get("workflow_type", choice(WORKFLOW_TYPES), None)
    workflow_action = fields.get("workflow_action", choice(WORKFLOW_ACTIONS), None)
    metadata: dict[str, Any] = fields.get("metadata", _metadata, {})
    if "next_run_at" in raw and raw["next_run_at"] is None:
        if enabled:
            fields.error("next_run_at", "null means 'do not run', which contradicts enabled = true")
        enabled = False
    fields.close()
    return TaskSpec(
        name=cast(str, task_name),
        task_module=cast(str, module),
        description=description,
        task_params=params,
        task_timeout_sec=timeout,
        schedules=schedules,
        next_run_at=next_run_at,
        enabled=True if enabled is None else enabled,
        options=options,
        email_recipients=recipients,
        frontend_prefs=frontend_prefs,
        workflow_type=workflow_type,
        workflow_action=workflow_action,
        metadata=metadata,
    )


def task_paths(
    items: Sequence[Any], prefix: str, *, lines: Sequence[int] | None = None
) -> tuple[list[str], list[FieldError]]:
    """Name each of a file's task definitions for its error paths, and refuse reused names.

    A definition is `prefix[<name>]` when its name is valid and unique among `items`, else
    `prefix #<position>` (counted from 1, as a reader counts), followed by ` (line <n>)`
    when `lines` gives the line each definition starts on (see `task_header_lines`).
    Returns the paths, in order, and one error per definition that reuses an earlier one's
    name.
    """
    names = [item.get("name") if isinstance(item, Mapping) else None for item in items]
    valid = [name if is_valid_name(name) else None for name in names]
    uses = Counter(name for name in valid if name is not None)
    if lines is not None and len(lines) != len(items):
        lines = None
    paths: list[str] = []
    errors: list[FieldError] = []
    first_use: dict[str, str] = {}
    for index, name in enumerate(valid):
        # By name when that is unambiguous, else by position.
        if name and uses[name] == 1:
            path = f"{prefix}[{name}]"
        else:
            path = f"{prefix} #{index + 1}"
            if lines is not None:
                path += f" (line {lines[index]})"
        if name in first_use:
            reason = f"duplicate task name {name!r}, also used by {first_use[name]}"
            errors.append(FieldError(join_path(path, "name"), reason))
        elif name is not None:
            first_use[name] = path
        paths.append(path)
    return paths, errors


_TASK_HEADER = re.compile(r"""^[ \t]*\[\[[ \t]*(?:task|"task"|'task')[ \t]*\]\]""", re.MULTILINE)


def task_header_lines(text: str, count: int) -> list[int] | None:
    """The line (from 1) of each `[[task]]` header in TOML `text`, if there are `count`.

    tomllib gives no positions; a scan for the headers does, unless the tasks are written
    another way (an inline array) or a header-like line sits in a multi-line string: then
    the number found differs from `count` and the answer is None.
    """
    lines = [text.count("\n", 0, match.start()) + 1 for match in _TASK_HEADER.finditer(text)]
    return lines if len(lines) == count else None


def check_name(value: Any, path: str) -> str:
    """Check a task's or an API principal's name: a principal's shows up as created_by, and
    for Basic auth it must also hold no ':' (which the rule keeps out)."""
    text = string()(value, path)
    if not _NAME.fullmatch(text):
        fail(path, f"must be {_NAME_RULE}, got {text!r}")
    return text


def is_valid_name(value: Any) -> bool:
    """Whether `value` passes `check_name`."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def email_address(value: Any, path: str) -> str:
    """Check one e-mail address, as a recipient or a sender."""
    address = string()(value, path)
    if not _EMAIL.fullmatch(address):
        fail(path, f"must be an e-mail address such as 'ops@example.org', got {address!r}")
    return address


def _module_name(known_modules: Collection[str] | None) -> Check[str]:
    def check(value: Any, path: str) -> str:
        module = string()(value, path)
        if known_modules is not None and module not in known_modules:
            fail(path, unknown_name_reason("module", module, known_modules))
        return module

    return check


def _schedules(default_timezone: str) -> Check[ScheduleSet]:
    def check(value: Any, path: str) -> ScheduleSet:
        if not isinstance(value, list):
            fail(path, f"must be an array of schedules, got {describe(value)}")
        return parse_schedules(value, default_timezone=default_timezone, path=path)

    return check


def _optional_instant(value: Any, path: str) -> datetime | None:
    if value is None:  # JSON null: "do not run"; see validate_task_spec
        return None
    errors: list[FieldError] = []
    instant = parse_instant(value, path, errors)
    if instant is None:
        raise ValidationError(errors)
    return instant.astimezone(UTC)


def _task_options(value: Any, path: str) -> TaskOptions:
    fields = Fields.of(value, path)
    options = TaskOptions(
        priority=fields.get("priority", integer(), 0),
        overlap=fields.get("overlap", member(Overlap), Overlap.SKIP),
        catch_up=fields.get("catch_up", member(CatchUp), CatchUp.ONCE),
        max_retries=fields.get("max_retries", integer(minimum=0, maximum=MAX_RETRIES), 0),
        retry_delay_sec=fields.get(
            "retry_delay_sec",
            number(minimum=0, exclusive=True, maximum=MAX_RETRY_DELAY_SEC),
            60.0,
        ),
        files=_file_options(fields),
    )
    fields.close()
    return options


def _file_options(fields: Fields) -> dict[str, Any]:
    """The Nodeum data-mover options given (see model.FILE_OPTIONS), validated."""
    files: dict[str, Any] = {}
    for key, kind in FILE_OPTIONS.items():
        check: Check[Any]
        if isinstance(kind, tuple):
            check = choice(kind)
        elif kind is bool:
            check = boolean
        else:
            check = integer(minimum=1, maximum=MAX_PARALLEL)
        value = fields.get(key, check, None)
        if value is not None:
            files[key] = value
    return files


def _email(value: Any, path: str) -> tuple[EmailRecipient, ...]:
    fields = Fields.of(value, path)
    recipients: tuple[EmailRecipient, ...] = fields.get("recipients", list_of(_email_recipient), ())
    fields.close()
    return recipients


def _email_recipient(value: Any, path: str) -> EmailRecipient:
    fields = Fields.of(value, path)
    address = fields.require("email", email_address)
    problems_only = fields.get("problems_only", boolean, False)
    fields.close()
    return EmailRecipient(email=cast(str, address), problems_only=problems_only)


def _metadata(value: Any, path: str) -> dict[str, Any]:
    # The Nodeum shape: `task` an object, `files` an object of strings; other keys are kept.
    metadata = json_object(value, path)
    errors: list[FieldError] = []
    if "task" in metadata and not isinstance(metadata["task"], dict):
        errors.append(FieldError(join_path(path, "task"), "must be an object"))
    files = metadata.get("files")
    if files is not None and not isinstance(files, dict):
        errors.append(FieldError(join_path(path, "files"), "must be an object of strings"))
    elif files:
        errors.extend(
            FieldError(join_path(join_path(path, "files"), key), "must be a string")
            for key, item in files.items()
            if not isinstance(item, str)
        )
    if errors:
        raise ValidationError(errors)
    return metadata

"""The commands that change something: run, defer, actions, delete, and `apply` of a
task file (TOML `[[task]]` tables or JSON), checked with the daemon's own validator first."""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from taskd.api.render import SPEC_FIELDS
from taskd.ctl.client import (
    Client,
    CtlError,
    InvalidInputError,
    RefusedError,
    os_reason,
    task_path,
)
from taskd.ctl.output import Output
from taskd.errors import FieldError, ValidationError, join_path
from taskd.model import TaskSpec
from taskd.taskspec import task_header_lines, task_paths, validate_task_spec
from taskd.validate import did_you_mean

# Schedules and params are validated again by the daemon; the client checks a file's
# structure with the same validator first, using a zone that always exists.
_CHECK_TIMEZONE = "UTC"
# A definition may set these, but a v2 update cannot clear them (an absent field keeps its
# stored value and the validator refuses null for them).
_UNCLEARABLE = ("workflow_type", "workflow_action")


# ---------------------------------------------------------------------------------------
# Commands: actions


def parse_metadata(text: str | None) -> dict[str, Any]:
    """`--metadata`: a JSON object, the trigger metadata of a run. InvalidInputError if not."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"--metadata: invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidInputError('--metadata: must be a JSON object, e.g. \'{"reason": "test"}\'')
    return value


async def run_task(client: Client, out: Output, name: str, metadata: dict[str, Any]) -> None:
    """`run`: start a run now; print its execution id."""
    answer = await client.call("PUT", task_path(name, "action", "run"), body=metadata)
    out.result(answer, "execution_id")


async def defer_task(client: Client, out: Output, name: str, metadata: dict[str, Any]) -> None:
    """`defer`: prepare a run for `run-defer`; print the defer id."""
    answer = await client.call("PUT", task_path(name, "action", "defer_run"), body=metadata)
    out.result(answer, "defer_id")


async def run_deferred(client: Client, out: Output, defer_id: str) -> None:
    """`run-defer`: start a deferred run; print its execution id."""
    answer = await client.call("PUT", "/tasks/-/action/run_defer", query={"defer_id": defer_id})
    out.result(answer, "execution_id")


async def act(client: Client, out: Output, name: str, action: str) -> None:
    """`pause`, `resume`, `stop`, `kill` (force_stop): print what the daemon did."""
    answer = await client.call("PUT", task_path(name, "action", action))
    out.result(answer, "msg")


async def delete_task(client: Client, out: Output, name: str) -> None:
    """`delete`: delete a task (its running executions are stopped); print which one."""
    task = await client.call("GET", task_path(name))
    await client.call("DELETE", task_path(task["id"]))
    if out.json:
        out.document(task)
    else:
        out.line(f"deleted {task['name']} (id {task['id']})")


# ---------------------------------------------------------------------------------------
# apply


@dataclass(frozen=True, slots=True)
class FileTask:
    """One task of a task file: where it is (`task[name]`), its definition, its fields."""

    path: str
    spec: TaskSpec
    given: frozenset[str]  # the fields the file names (`comment` counted as `description`)


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A task file read and checked: its tasks in file order."""

    source: str
    tasks: tuple[FileTask, ...]


def read_task_file(path: Path, stdin: TextIO | None = None) -> TaskFile:
    """Read `[[task]]` tables (TOML) or a list of task objects (JSON) from `path` (`-` for
    stdin). JSON when the name ends in `.json` or the text starts with `[` then `{` or `]`;
    TOML otherwise. Every task is checked with the daemon's validator (module params
    aside: only the daemon knows its modules). Raises `InvalidInputError` naming each
    problem as `FILE: task[<name>].<field>: <reason>`.
    """
    source = "stdin" if str(path) == "-" else str(path)
    try:
        text = (stdin or sys.stdin).read() if source == "stdin" else path.read_text("utf-8-sig")
    except OSError as error:
        raise InvalidInputError(f"cannot read {source}: {os_reason(error)}") from None
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{source}: not UTF-8 text (offset {error.start})") from None
    if _looks_like_json(path, text):
        items, lines = _json_tasks(text, source), None
    else:
        items = _toml_tasks(text, source)
        lines = task_header_lines(text, len(items))
    tasks, errors = _check_tasks(items, lines)
    if errors:
        raise InvalidInputError(*(f"{source}: {error}" for error in errors))
    return TaskFile(source, tasks)


def _looks_like_json(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() == ".toml":
        return False
    start = text.lstrip()
    return start.startswith("[") and start[1:].lstrip()[:1] in {"{", "]"}


def _json_tasks(text: str, source: str) -> list[Any]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{source}: invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: must hold a JSON list of task objects")
    return items


def _toml_tasks(text: str, source: str) -> list[Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInputError(f"{source}: invalid TOML: {error}") from None
    unknown = sorted(set(raw) - {"task"})
    if unknown:
        raise InvalidInputError(
            *(
                f"{source}: {key}: unknown key; a task file holds [[task]] tables only"
                for key in unknown
            )
        )
    items = raw.get("task", [])
    if not isinstance(items, list):
        raise InvalidInputError(f"{source}: task: must be [[task]] tables")
    return items


def _check_tasks(
    items: list[Any], lines: list[int] | None
) -> tuple[tuple[FileTask, ...], list[FieldError]]:
    """Validate each item as the config file's `[[task]]` is validated, named the same way
    (`taskspec.task_paths`): `task[<name>]` when the name is valid and unique, else
    `task #<position>`, with its line when `lines` gives it.
    """
    paths, errors = task_paths(items, "task", lines=lines)
    tasks: list[FileTask] = []
    for item, path in zip(items, paths, strict=True):
        if not isinstance(item, dict):
            errors.append(FieldError(path, "must be a table (a JSON object)"))
            continue
        raw = dict(item)
        if "comment" in raw:  # the v2 name of `description`
            if "description" in raw:
                errors.append(FieldError(join_path(path, "comment"), "conflicts with description"))
                continue
            raw["description"] = raw.pop("comment")
        try:
            spec = validate_task_spec(raw, path=path, default_timezone=_CHECK_TIMEZONE)
        except ValidationError as error:
            errors.extend(error.errors)
            continue
        tasks.append(FileTask(path, spec, frozenset(raw)))
    return tuple(tasks), errors


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` did to one task."""

    action: str  # created, updated, unchanged
    task: dict[str, Any]  # as the daemon renders it
    changed: tuple[str, ...] = ()


async def apply(client: Client, out: Output, tasks: TaskFile) -> None:
    """`apply`: create each task of the file that does not exist (by name) and update the
    others to match the file; print what changed.

    Fields the file leaves out are reset to their defaults, as the config file's tasks are,
    except what a v2 update cannot clear: `workflow_type` and `workflow_action` (a note
    names them) and a one-shot `next_run_at` (which the API does not show apart from the
    computed one). A task whose definition already matches is not written; one that names
    `next_run_at` always is, as it cannot be compared.
    Nothing is written when a task names a module the daemon lacks. Otherwise every task is
    tried, and the problems are raised together at the end (InvalidInputError if any is a
    validation error).
    """
    modules = await client.call("GET", "/modules")
    known = {module["name"] for module in modules["modules"]}
    unknown = [
        f"{tasks.source}: {item.path}.task_module: unknown module {item.spec.task_module!r} "
        f"(the daemon has: {', '.join(sorted(known))}){did_you_mean(item.spec.task_module, known)}"
        for item in tasks.tasks
        if item.spec.task_module not in known
    ]
    if unknown:
        raise InvalidInputError(*unknown)
    results: list[Applied] = []
    problems: list[CtlError] = []
    for item in tasks.tasks:
        try:
            applied = await _apply_one(client, out, item, tasks.source)
        except (InvalidInputError, RefusedError) as error:
            problems.append(error.below(item.path))
            continue
        results.append(applied)
        if not out.json:
            task = applied.task
            what = f"{applied.action:<9} {task['name']} (id {task['id']})"
            out.line(f"{what}: {', '.join(applied.changed)}" if applied.changed else what)
    if out.json:
        out.document(
            [{"action": r.action, "changed": list(r.changed), "task": r.task} for r in results]
        )
    if problems:
        messages = [f"{tasks.source}: {m}" for problem in problems for m in problem.messages]
        if any(isinstance(problem, InvalidInputError) for problem in problems):
            raise InvalidInputError(*messages)
        raise RefusedError(*messages)


async def _apply_one(client: Client, out: Output, item: FileTask, source: str) -> Applied:
    body = item.spec.to_json()
    found = await client.call("GET", "/tasks", query={"name": item.spec.name, "limit": 1})
    if not found["tasks"]:
        created = await client.call("POST", "/tasks", body=body)
        return Applied("created", created)
    before = found["tasks"][0]
    for key in _UNCLEARABLE:
        if key in before and key not in body:
            out.note(f"{source}: {item.path}: {key} stays {before[key]!r}: the API cannot clear it")
    if "next_run_at" not in item.given and not _differs(body, before):
        return Applied("unchanged", before)
    after = await client.call("PUT", task_path(before["id"]), body=body)
    changed = _changes(before, after)
    if not changed and after.get("version") != before.get("version"):
        changed = ("task_params",)  # a secret changed: the API shows it masked, before and after
    return Applied("updated" if changed else "unchanged", after, changed)


def _definition(rendered: Mapping[str, Any]) -> dict[str, Any]:
    """The definition fields of a rendered task, named as in `TaskSpec.to_json`: the
    rendered spec fields, and `comment` as `description` (`next_run_at` is rendered live,
    computed, so it is left out of comparisons).
    """
    fields = {key: rendered[key] for key in SPEC_FIELDS if key in rendered}
    fields["description"] = rendered.get("comment") or ""
    return fields


def _differs(body: Mapping[str, Any], rendered: Mapping[str, Any]) -> bool:
    """Whether writing `body` would change the stored definition that `rendered` shows."""
    stored = _definition(rendered)
    return any(
        stored.get(key) != value
        for key, value in body.items()
        if key not in {"name", "next_run_at"}
    )


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields that differ, one level deep for objects (`options.overlap`)."""
    old, new = _definition(before), _definition(after)
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [
                f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)
            ]
        else:
            changed.append(key)
    return tuple(changed)

"""The rules of a write to a task definition, the same for every front end: which fields
a client may not set, how a partial update merges over the stored definition, which version
a write must name. `Core` applies them; the API dialects only translate names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskd.errors import ConflictError, ValidationError, join_path
from taskd.model import Task, TaskSpec
from taskd.schedule import format_utc

# Ids are the store's 64-bit integers: larger digits cannot name a row.
MAX_ID = 2**63 - 1

# What the server keeps up to date on a task: never part of a definition. Clients send back
# what they got, so a write ignores these.
LIVE_FIELDS = frozenset(
    {
        "status",
        "status_msg",
        "status_percent",
        "run_started_at",
        "run_finished_at",
        "run_canceled_at",
        "state",
        "created_at",
        "updated_at",
        "created_by",
        "updated_by",
        "last_execution",
        "source",
        "version",
        "retired",
        "retired_at",
    }
)


@dataclass(frozen=True, slots=True)
class Edit:
    """A checked write a front end asks for: a new task (`task` None) or `task` changed to
    `spec`; `version` is the version the write names (current + 1), None for no check.

    `changes` (what the front end sent, under the core's names) and `path` (where its
    fields are, for errors) let the write merge them again over the task as it is stored
    when the write commits, should another write have changed it since `task` was read.
    """

    task: Task | None
    spec: TaskSpec
    version: int | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""


def as_id(name_or_id: str | int) -> int | None:
    """`name_or_id` as a task id, or None if it cannot be one (then it can only be a name)."""
    text = str(name_or_id)
    if isinstance(name_or_id, int) or (text.isascii() and text.isdigit() and len(text) < 20):
        task_id = int(name_or_id)
        if 0 < task_id <= MAX_ID:
            return task_id
    return None


def named_version(changes: Mapping[str, Any], *, required: bool, path: str) -> int | None:
    """The version a write names, None if it names none. ValidationError if it is no
    integer, or missing when `required`."""
    path = join_path(path, "version")
    if "version" not in changes:
        if required:
            raise ValidationError.single(path, "is required: current version + 1")
        return None
    version = changes["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValidationError.single(path, "must be an integer (the current version + 1)")
    return version


def check_version(task: Task, version: int | None) -> None:
    """ConflictError unless `version` (what a write names) is None or current + 1."""
    if version is not None and version != task.version + 1:
        raise ConflictError(
            f"task {task.id} is at version {task.version}: send version {task.version + 1},"
            f" not {version}"
        )


def merge_definition(changes: Mapping[str, Any], task: Task | None = None) -> dict[str, Any]:
    """The definition a write asks for: `changes` over `task`'s stored definition (a
    partial update), or alone (a new task).

    The fields the server keeps (`LIVE_FIELDS`) are ignored, and so is a `next_run_at` that
    is the task's computed due time sent back unchanged: that is not a one-shot request.
    """
    raw = dict(task.spec) if task is not None else {}
    shown_due = None if task is None or task.next_run_at is None else format_utc(task.next_run_at)
    for key, value in changes.items():
        if key in LIVE_FIELDS or (
            shown_due is not None and key == "next_run_at" and value == shown_due
        ):
            continue
        raw[key] = value
    return raw

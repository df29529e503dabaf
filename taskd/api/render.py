"""Tasks, executions and log entries as JSON, in each dialect's shape.

Both dialects render the core's superset of fields; each adds its own names (v2: `id` as a
string, `comment`; v1: `_id` as a number, the `{"_user", "task"}` wrapper). Absent values
are left out rather than sent as null: the specs declare no nullable fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskd.model import Execution, LogEntry, Task, TaskStatus
from taskd.schedule import format_utc

# Fields of a stored definition that both dialects show under their own name (`ctl`
# compares them too).
SPEC_FIELDS = (
    "task_module",
    "task_params",
    "task_timeout_sec",
    "schedules",
    "email",
    "frontend_prefs",
    "metadata",
    "workflow_type",
    "workflow_action",
    "options",
    "enabled",
)

# fylr knows five statuses; the two it lacks map to their nearest.
_V1_STATUS = {TaskStatus.QUEUED: "new", TaskStatus.PAUSED: "running"}


def _time(value: Any) -> str | None:
    return None if value is None else format_utc(value)


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def execution_json(execution: Execution) -> dict[str, Any]:
    """An execution in the Nodeum `task_execution` shape plus taskd's fields."""
    return _without_none(
        {
            "id": str(execution.id),
            "task_id": str(execution.task_id),
            "trigger": str(execution.trigger),
            "trigger_metadata": dict(execution.trigger_metadata) or None,
            "attempt": execution.attempt,
            "status": str(execution.status),
            "status_msg": execution.status_msg,
            "slot_at": _time(execution.slot_at),
            "scheduled_for": _time(execution.scheduled_for),
            "queued_at": _time(execution.queued_at),
            "started_at": _time(execution.started_at),
            "finished_at": _time(execution.finished_at),
            # The spec types progress as an integer percent.
            "progress": None if execution.progress is None else round(execution.progress),
            "size_todo": execution.size_todo,
            "size_done": execution.size_done,
            "nodes_todo": execution.nodes_todo,
            "nodes_done": execution.nodes_done,
            "bandwidth": execution.bandwidth,
            "dispatcher": execution.dispatcher,
            "node": execution.node,  # the cluster node that ran it (PostgreSQL store)
        }
    )


def _live_fields(task: Task) -> dict[str, Any]:
    return {
        "next_run_at": _time(task.next_run_at),
        "status_msg": task.status_msg,
        "status_percent": task.status_percent,
        "run_started_at": _time(task.run_started_at),
        "run_finished_at": _time(task.run_finished_at),
        "run_canceled_at": _time(task.run_canceled_at),
        "state": dict(task.state) if task.state is not None else None,
        "version": task.version,
        "created_at": _time(task.created_at),
        "updated_at": _time(task.updated_at),
        "created_by": task.created_by,
        "updated_by": task.updated_by,
        "source": str(task.source),
        # A config task that left the file: disabled, kept with its history (see README).
        "retired": task.retired_at is not None,
        "retired_at": _time(task.retired_at),
    }


def task_v2(task: Task, last_execution: Execution | None = None) -> dict[str, Any]:
    """A task in the Nodeum (v2) shape, with the core's superset of fields."""
    spec = task.spec
    body: dict[str, Any] = {
        "id": str(task.id),
        "name": task.name,
        "comment": spec.get("description") or None,
        "status": str(task.status),
        "user": task.created_by,
        **{name: spec.get(name) for name in SPEC_FIELDS},
        **_live_fields(task),
    }
    if last_execution is not None:
        body["last_execution"] = execution_json(last_execution)
    return _without_none(body)


def task_v1(task: Task) -> dict[str, Any]:
    """A task in the fylr (v1) shape: `{"_user": ..., "task": {...}}`."""
    spec = task.spec
    inner: dict[str, Any] = {
        "_id": task.id,
        "name": task.name,
        "description": spec.get("description", ""),
        "status": _V1_STATUS.get(task.status, str(task.status)),
        **{name: spec.get(name) for name in SPEC_FIELDS},
        **_live_fields(task),
    }
    # The owner: the principal that created the task ("config" for a config task).
    user = task.created_by or "taskd"
    return {
        "_user": {"_basetype": "user", "user": {"_generated_displayname": user}},
        "task": _without_none(inner),
    }


def log_entry_json(entry: LogEntry) -> dict[str, Any]:
    """One log entry, as both dialects show it."""
    return _without_none(
        {
            "idx": entry.idx,
            "execution_id": None if entry.execution_id is None else str(entry.execution_id),
            "level": entry.level,
            "msg": entry.msg,
            "status_percent": entry.status_percent,
            "timestamp": format_utc(entry.timestamp),
        }
    )

"""Records and statuses shared by the store, the scheduler, the runner and the API.

Records are frozen; a change builds a new record. Times are aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    """Status of a task: that of its latest execution, `new` before any."""

    NEW = "new"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    CANCELED = "canceled"
    ERROR = "error"


class ExecutionStatus(StrEnum):
    """Status of one execution. `skipped` records a slot that did not run, with the reason."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    CANCELED = "canceled"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        """Whether the execution has ended (no further status change)."""
        return self in _FINISHED


_FINISHED = frozenset(
    {ExecutionStatus.DONE, ExecutionStatus.CANCELED, ExecutionStatus.ERROR, ExecutionStatus.SKIPPED}
)
ACTIVE_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)


class TriggerKind(StrEnum):
    """Why an execution exists."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    DEFER = "defer"
    CATCH_UP = "catch_up"
    RETRY = "retry"
    RESUME = "resume"


class TaskSource(StrEnum):
    """Where a task is defined: the API may edit `api` tasks only."""

    API = "api"
    CONFIG = "config"


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """A stored task: its definition (`spec`, the validated JSON form) and its live state."""

    id: int
    name: str
    source: TaskSource
    spec: Mapping[str, Any]  # description, task_module, task_params, schedules, options, ...
    enabled: bool
    next_run_at: datetime | None
    status: TaskStatus
    status_msg: str | None
    status_percent: float | None
    run_started_at: datetime | None
    run_finished_at: datetime | None
    run_canceled_at: datetime | None
    state: Mapping[str, Any] | None
    version: int
    last_execution_id: int | None
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None

    @property
    def module(self) -> str:
        """The name of the module that runs this task."""
        return str(self.spec["task_module"])

    @property
    def options(self) -> Mapping[str, Any]:
        """The task's policies: priority, overlap, catch_up, max_retries, retry_delay_sec."""
        return self.spec.get("options") or {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    """One run of a task (or one slot that did not run: status `skipped`)."""

    id: int
    task_id: int
    trigger: TriggerKind
    trigger_metadata: Mapping[str, Any] = field(default_factory=dict)
    slot_at: datetime | None  # the schedule slot this row accounts for (unique per task)
    scheduled_for: datetime | None
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status: ExecutionStatus
    status_msg: str | None = None
    progress: float | None = None
    size_todo: int | None = None
    size_done: int | None = None
    nodes_todo: int | None = None
    nodes_done: int | None = None
    bandwidth: float | None = None
    dispatcher: str | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    """One line of a task's log; `idx` counts from 0 per task."""

    task_id: int
    idx: int
    execution_id: int | None
    level: str
    msg: str
    status_percent: float | None
    timestamp: datetime

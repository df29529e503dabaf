"""Records and statuses shared by the store, the scheduler, the runner and the API.

Records are frozen; a change builds a new record. Times are aware UTC datetimes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from taskd.schedule import ScheduleSet, format_utc

# The task fields a store can filter and sort on (`Store.query_tasks`); each store maps them
# to its own query language.
TASK_QUERY_FIELDS = frozenset(
    {
        "id",
        "name",
        "status",
        "source",
        "next_run_at",
        "created_at",
        "updated_at",
        "task_module",
        "workflow_type",
        "workflow_action",
        "priority",
    }
)


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


class Overlap(StrEnum):
    """What a slot does when it comes while the task is still running."""

    SKIP = "skip"  # log it and skip it
    QUEUE = "queue"  # keep one pending run
    PARALLEL = "parallel"
    REPLACE = "replace"  # stop the running one, then start


class CatchUp(StrEnum):
    """What happens to slots missed while the daemon was down."""

    ONCE = "once"  # run once for all of them, coalesced
    SKIP = "skip"
    ALL = "all"  # run each, oldest first


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """A task's run policies (the Nodeum `options`, limited to what taskd acts on)."""

    priority: int = 0
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.ONCE
    max_retries: int = 0
    retry_delay_sec: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailRecipient:
    """Who gets mail after a run; with `problems_only`, only when the run did not end `done`."""

    email: str
    problems_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """A validated task definition: what a config `[[task]]` or an API body asks for.

    The dict fields hold JSON values copied from the input; treat them as read-only.
    `next_run_at` is aware UTC or None. `enabled=False` also stands for the API's explicit
    `next_run_at: null` ("do not run").
    """

    name: str
    task_module: str
    description: str = ""
    task_params: dict[str, Any] = field(default_factory=dict)
    task_timeout_sec: int = 0
    schedules: ScheduleSet = field(default_factory=ScheduleSet)
    next_run_at: datetime | None = None
    enabled: bool = True
    options: TaskOptions = field(default_factory=TaskOptions)
    email_recipients: tuple[EmailRecipient, ...] = ()
    frontend_prefs: dict[str, Any] = field(default_factory=dict)
    workflow_type: str | None = None
    workflow_action: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """Return up to `count` fire times strictly after `after` (aware), in order, in UTC.

        Merges the one-shot `next_run_at` with the schedules' slots. Ignores `enabled`: this
        answers "when would it fire", the scheduler decides whether it does.
        """
        times = self.schedules.times(after, count)
        if self.next_run_at is not None and self.next_run_at > after:
            times = sorted({*times, self.next_run_at})[:count]
        return times

    def to_json(self) -> dict[str, Any]:
        """Return the normalized JSON form; `validate_task_spec` turns it back into this spec.

        Absent values are left out rather than written as null: a null `next_run_at` would
        mean "do not run".
        """
        result: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "task_module": self.task_module,
            "task_params": copy.deepcopy(self.task_params),
            "task_timeout_sec": self.task_timeout_sec,
            "schedules": self.schedules.to_json(),
            "enabled": self.enabled,
            "options": {
                "priority": self.options.priority,
                "overlap": str(self.options.overlap),
                "catch_up": str(self.options.catch_up),
                "max_retries": self.options.max_retries,
                "retry_delay_sec": self.options.retry_delay_sec,
            },
            "email": {
                "recipients": [
                    {"email": r.email, "problems_only": r.problems_only}
                    for r in self.email_recipients
                ]
            },
            "frontend_prefs": copy.deepcopy(self.frontend_prefs),
            "metadata": copy.deepcopy(self.metadata),
        }
        if self.next_run_at is not None:
            result["next_run_at"] = format_utc(self.next_run_at)
        if self.workflow_type is not None:
            result["workflow_type"] = self.workflow_type
        if self.workflow_action is not None:
            result["workflow_action"] = self.workflow_action
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """Why an execution runs: `schedule`, `manual`, `defer`, `catch_up`, `retry`, `resume`.

    `metadata` is the body of a `run` action (or empty); `scheduled_for` is the slot's
    instant for schedule-triggered runs, as RFC 3339 UTC.
    """

    kind: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    scheduled_for: str | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """An execution row (already committed as `queued`) waiting to be started."""

    execution_id: int
    task: Task
    trigger: Trigger
    due: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an execution ended, handed to the scheduler (retries, queued overlap)."""

    job: Job
    status: ExecutionStatus
    status_msg: str | None
    stopped_by_user: bool  # a stop / force_stop / replace / shutdown, not a failure

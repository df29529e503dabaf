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

from taskd.schedule import ScheduleSet, format_utc, parse_schedules

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
        # The `type`s of a task's `task_params.sources` (a list of objects) and
        # `task_params.destination` (an object or a list of them), as one text
        # `,type1,type2,` (empty or NULL without any): filter with `like '%,local,%'`.
        "sources.type",
        "destinations.type",
    }
)


# Nodeum's task options for data movers, with the values each takes (a tuple of choices, or
# the type). taskspec validates them; the `files` module acts on them.
FILE_OPTIONS: Mapping[str, tuple[str, ...] | type] = {
    "conflict_resolution": ("rename", "overwrite", "ignore"),
    "file_checksum": ("crc32", "md5", "xxhash64"),
    "processing_order": ("asc", "dsc"),
    "recursive": bool,
    "ignore_hidden": bool,
    "reset_file_date": bool,
    "reset_folder_date": bool,
    "keep_file_ownership": bool,
    "soft_erase": bool,
    "remove_root_folder": bool,
    "parallel": int,
}
MAX_PARALLEL = 64


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
    # When a config task was retired: it left the config file, so it is disabled and kept
    # with its history until the file names it again or it is deleted. None: not retired.
    retired_at: datetime | None = None

    # Typed views of `spec`, decoded on first use: the engine reads these, never the JSON.
    _options: TaskOptions | None = field(default=None, init=False, repr=False, compare=False)
    _recipients: tuple[EmailRecipient, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def module(self) -> str:
        """The name of the module that runs this task."""
        return str(self.spec["task_module"])

    @property
    def options(self) -> TaskOptions:
        """The task's policies: priority, overlap, catch_up, max_retries, retry_delay_sec."""
        if self._options is None:
            object.__setattr__(self, "_options", TaskOptions.from_json(self.spec.get("options")))
        assert self._options is not None
        return self._options

    def schedule_set(self, default_timezone: str) -> ScheduleSet:
        """The task's schedules; those without their own zone are read in `default_timezone`.

        Raises ValidationError if the stored schedules no longer parse (a zone removed from
        the system's database, say).
        """
        return parse_schedules(
            list(self.spec.get("schedules") or []), default_timezone=default_timezone
        )

    @property
    def task_params(self) -> Mapping[str, Any]:
        """The module's params as stored (validated against the module when it starts)."""
        params = self.spec.get("task_params")
        return params if isinstance(params, Mapping) else {}

    @property
    def timeout_sec(self) -> float | None:
        """How long one execution may take, None for no limit (`task_timeout_sec` 0)."""
        value = self.spec.get("task_timeout_sec")
        return value if isinstance(value, int | float) and value > 0 else None

    @property
    def email_recipients(self) -> tuple[EmailRecipient, ...]:
        """Who gets mail after a run (`email.recipients`)."""
        if self._recipients is None:
            object.__setattr__(
                self, "_recipients", EmailRecipient.list_from_json(self.spec.get("email"))
            )
        assert self._recipients is not None
        return self._recipients


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
    # The cluster node that claimed and runs it (PostgreSQL store); None on a single server.
    node: str | None = None


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
    # Nodeum's options for data movers (`conflict_resolution`, `file_checksum`, ...; see
    # FILE_OPTIONS): only those given, validated. The `files` module reads them.
    files: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None) -> TaskOptions:
        """Decode the stored (validated, normalized) form; absent keys take the defaults.

        The defaults live in this class alone: stored definitions of older versions may lack
        a key, and the validator builds its records through the same class.
        """
        if not stored:
            return cls()
        default = cls()
        return cls(
            priority=int(stored.get("priority", default.priority)),
            overlap=Overlap(stored.get("overlap", default.overlap)),
            catch_up=CatchUp(stored.get("catch_up", default.catch_up)),
            max_retries=int(stored.get("max_retries", default.max_retries)),
            retry_delay_sec=float(stored.get("retry_delay_sec", default.retry_delay_sec)),
            files={key: stored[key] for key in FILE_OPTIONS if key in stored},
        )

    def to_json(self) -> dict[str, Any]:
        """Return the stored form (every key, enums as their values)."""
        return {
            "priority": self.priority,
            "overlap": str(self.overlap),
            "catch_up": str(self.catch_up),
            "max_retries": self.max_retries,
            "retry_delay_sec": self.retry_delay_sec,
            **self.files,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailRecipient:
    """Who gets mail after a run; with `problems_only`, only when the run did not end `done`."""

    email: str
    problems_only: bool = False

    @classmethod
    def list_from_json(cls, stored: Any) -> tuple[EmailRecipient, ...]:
        """Decode the stored `email` object (`{"recipients": [...]}`); skip malformed items."""
        raw = stored.get("recipients") if isinstance(stored, Mapping) else None
        return tuple(
            cls(email=str(item["email"]), problems_only=bool(item.get("problems_only")))
            for item in raw or ()
            if isinstance(item, Mapping) and item.get("email")
        )

    def to_json(self) -> dict[str, Any]:
        """Return the stored form."""
        return {"email": self.email, "problems_only": self.problems_only}


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
            "options": self.options.to_json(),
            "email": {"recipients": [r.to_json() for r in self.email_recipients]},
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

"""The operations every front end shares: the config file, both API dialects and the CLI.

Validation, the rules about config-owned tasks and versions, and the actions (run, defer,
pause, resume, stop, force stop) live here once; the front ends only translate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from taskd.clock import Clock
from taskd.errors import (
    ActionError,
    ConflictError,
    FieldError,
    NotFoundError,
    ValidationError,
    join_path,
)
from taskd.model import (
    ExecutionStatus,
    Job,
    Overlap,
    Task,
    TaskSource,
    TaskSpec,
    Trigger,
    TriggerKind,
)
from taskd.modules.registry import ModuleRegistry
from taskd.runner import Runner
from taskd.schedule import format_utc
from taskd.scheduler import Scheduler
from taskd.store import NewExecution, Store
from taskd.taskspec import validate_task_spec

log = structlog.get_logger("taskd.core")

DEFER_TTL = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """What reconciling the config file did, by task name."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # names taken by API-defined tasks


def _schedule_fields(spec_json: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a definition that decide `next_run_at`."""
    return (spec_json.get("schedules"), spec_json.get("next_run_at"), spec_json.get("enabled"))


def _has_zoneless_schedule(spec_json: Mapping[str, Any]) -> bool:
    """Whether a stored definition has a calendar or cron schedule without its own zone."""
    return any(
        isinstance(schedule, Mapping)
        and "interval_sec" not in schedule
        and "timezone" not in schedule
        for schedule in spec_json.get("schedules") or ()
    )


class Core:
    """Task operations on top of the store, scheduler and runner."""

    def __init__(
        self,
        *,
        store: Store,
        scheduler: Scheduler,
        runner: Runner,
        modules: ModuleRegistry,
        clock: Clock,
        default_timezone: str,
        config_source: str = "the config file",
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.runner = runner
        self.modules = modules
        self.clock = clock
        self.config_source = config_source
        scheduler.set_default_timezone(default_timezone)

    @property
    def default_timezone(self) -> str:
        """Where schedules without their own `timezone` are read (`[daemon].timezone`)."""
        return self.scheduler.default_timezone

    async def set_default_timezone(self, zone: str) -> int:
        """Read zone-less schedules in `zone` from now on; return how many tasks moved.

        Such schedules keep "no zone" in storage, so only their stored due times need
        recomputing (a one-shot `next_run_at` stays as it is: it is an instant).
        """
        if zone == self.default_timezone:
            return 0
        self.scheduler.set_default_timezone(zone)
        now = self.clock.now()
        moved = 0
        for task in await self.store.list_tasks():
            if not task.enabled or not _has_zoneless_schedule(task.spec):
                continue
            schedules = task.schedule_set(zone)
            one_shot = task.spec.get("next_run_at")
            candidates = [schedules.next_after(now)]
            if one_shot and task.next_run_at is not None and task.next_run_at > now:
                candidates.append(task.next_run_at)
            next_run_at = min((t for t in candidates if t is not None), default=None)
            if next_run_at != task.next_run_at:
                await self.store.set_next_run_at(task.id, next_run_at)
                self.scheduler.task_changed(task.id, await self.store.get_task(task.id))
                moved += 1
        return moved

    # -- definitions ----------------------------------------------------------------------

    def validate(self, raw: Mapping[str, Any], *, path: str = "") -> TaskSpec:
        """Validate a task definition, its module params included. Raises ValidationError."""
        spec = validate_task_spec(
            raw,
            path=path,
            default_timezone=self.default_timezone,
            known_modules=self.modules.names(),
        )
        self.check_params(spec, path=path)
        return spec

    def check_params(self, spec: TaskSpec, *, path: str = "") -> None:
        """Validate a spec's params against its module. Raises ValidationError."""
        self.modules.validate(
            spec.task_module, spec.task_params, path=join_path(path, "task_params")
        )

    def next_run_at(self, spec: TaskSpec, now: datetime) -> datetime | None:
        """The first due time of a new or changed definition: None if it never runs."""
        if not spec.enabled:
            return None
        candidates = [t for t in (spec.next_run_at, spec.schedules.next_after(now)) if t]
        return min(candidates) if candidates else None

    async def create_task(
        self, spec: TaskSpec, *, source: TaskSource = TaskSource.API, by: str | None = None
    ) -> Task:
        """Store a new task and schedule it. ConflictError if the name is taken."""
        now = self.clock.now()
        next_run_at = self.next_run_at(spec, now)
        task = await self.store.insert_task(
            name=spec.name,
            source=source,
            spec=spec.to_json(),
            enabled=spec.enabled,
            next_run_at=next_run_at,
            now=now,
            by=by,
        )
        self.scheduler.task_changed(task.id, task)
        return task

    async def update_task(
        self,
        task_id: int,
        spec: TaskSpec,
        *,
        expected_version: int | None = None,
        by: str | None = None,
        as_config: bool = False,
    ) -> Task:
        """Replace a task's definition (version + 1).

        Keeps the stored `next_run_at` when schedules, `next_run_at` and `enabled` are
        unchanged, so an edit of params does not move (or lose) a due slot. ConflictError
        for a config-defined task (unless `as_config`) or a version mismatch.
        """
        task = await self.store.get_task(task_id)
        self._check_editable(task, as_config)
        spec_json = spec.to_json()
        if spec_json == task.spec and expected_version is None:
            return task  # nothing changes: no new version, no write
        if _schedule_fields(spec_json) == _schedule_fields(task.spec):
            next_run_at = task.next_run_at
        else:
            next_run_at = self.next_run_at(spec, self.clock.now())
        updated = await self.store.update_task(
            task_id,
            spec=spec_json,
            enabled=spec.enabled,
            next_run_at=next_run_at,
            now=self.clock.now(),
            by=by,
            name=spec.name,
            expected_version=expected_version,
        )
        self.scheduler.task_changed(task_id, updated)
        return updated

    async def delete_task(self, task_id: int, *, as_config: bool = False) -> None:
        """Delete a task; its running executions are stopped first (forced)."""
        task = await self.store.get_task(task_id)
        self._check_editable(task, as_config)
        self.scheduler.task_changed(task_id, None)  # runs not started yet are dropped
        for execution_id in self.runner.running_for_task(task_id):
            self.runner.force_stop(execution_id, "task deleted")
            await self.runner.wait_finished(execution_id)
        await self.store.delete_task(task_id)

    def _check_editable(self, task: Task, as_config: bool) -> None:
        if task.source is TaskSource.CONFIG and not as_config:
            raise ConflictError(
                f"task {task.name!r} is defined in {self.config_source}: edit it there"
            )

    async def find(self, name_or_id: str | int) -> Task:
        """Return a task by id or name. NotFoundError if there is none."""
        text = str(name_or_id)
        if isinstance(name_or_id, int) or (text.isascii() and text.isdigit()):
            try:
                return await self.store.get_task(int(name_or_id))
            except (NotFoundError, OverflowError):  # an id past SQLite's range is no id
                pass
        task = await self.store.find_task(str(name_or_id))
        if task is None:
            raise NotFoundError(f"no task {name_or_id!r}")
        return task

    async def apply_config(self, specs: Sequence[TaskSpec]) -> ConfigChanges:
        """Make the stored config-defined tasks match `specs`: add, update, remove."""
        added, updated, removed, refused = [], [], [], []
        wanted = {spec.name: spec for spec in specs}
        for task in await self.store.list_tasks(source=TaskSource.CONFIG):
            if task.name not in wanted:
                await self.delete_task(task.id, as_config=True)
                removed.append(task.name)
        for spec in specs:
            existing = await self.store.find_task(spec.name)
            if existing is None:
                await self.create_task(spec, source=TaskSource.CONFIG, by="config")
                added.append(spec.name)
            elif existing.source is not TaskSource.CONFIG:
                log.error("config task name is taken by an API task; left alone", task=spec.name)
                refused.append(spec.name)
            elif existing.spec != spec.to_json():
                await self.update_task(existing.id, spec, by="config", as_config=True)
                updated.append(spec.name)
        return ConfigChanges(tuple(added), tuple(updated), tuple(removed), tuple(refused))

    # -- actions --------------------------------------------------------------------------

    async def run(
        self,
        task_id: int,
        metadata: Mapping[str, Any] | None = None,
        *,
        kind: TriggerKind = TriggerKind.MANUAL,
    ) -> int:
        """Start a run of the task now; return its execution id.

        ActionError if the task runs and its overlap policy is `skip`.
        """
        task = await self.store.get_task(task_id)
        if task.options.overlap is Overlap.SKIP and (
            self.runner.running_for_task(task_id)
            or self.runner.queued_for_task(task_id)
            or self.scheduler.pending_for_task(task_id)
        ):
            raise ActionError(f"task {task.name!r} is running and its overlap policy is 'skip'")
        now = self.clock.now()
        metadata = dict(metadata or {})
        [execution_id] = await self.store.add_executions(
            [
                NewExecution(
                    task_id=task_id, trigger=kind, scheduled_for=now, trigger_metadata=metadata
                )
            ],
            now,
        )
        assert execution_id is not None
        trigger = Trigger(kind=kind, metadata=metadata, scheduled_for=format_utc(now))
        self.scheduler.enqueue(Job(execution_id=execution_id, task=task, trigger=trigger, due=now))
        return execution_id

    async def defer_run(self, task_id: int, metadata: Mapping[str, Any] | None = None) -> str:
        """Record a run to be started later with `run_defer`; return its defer id."""
        await self.store.get_task(task_id)
        now = self.clock.now()
        return await self.store.create_defer(task_id, metadata or {}, now, now + DEFER_TTL)

    async def run_defer(self, defer_id: str) -> int:
        """Start a deferred run (once); return its execution id. DeferError if not usable."""
        task_id, metadata = await self.store.use_defer(defer_id, self.clock.now())
        return await self.run(task_id, metadata, kind=TriggerKind.DEFER)

    def _running(self, task: Task) -> list[int]:
        running = self.runner.running_for_task(task.id)
        if not running:
            raise ActionError(f"task {task.name!r} has no running execution")
        return running

    async def pause(self, task_id: int) -> list[int]:
        """Pause the task's running executions. ActionError if none runs or all are paused."""
        task = await self.store.get_task(task_id)
        paused = []
        for execution_id in self._running(task):
            try:
                self.runner.pause(execution_id)
                paused.append(execution_id)
            except ActionError:
                pass
        if not paused:
            raise ActionError(f"task {task.name!r} is paused already")
        return paused

    async def resume(self, task_id: int) -> list[int]:
        """Resume paused executions; or, if the last one was interrupted or stopped, start a
        new execution that continues from the saved state. ActionError otherwise.
        """
        task = await self.store.get_task(task_id)
        resumed = []
        for execution_id in self.runner.running_for_task(task_id):
            try:
                self.runner.resume(execution_id)
                resumed.append(execution_id)
            except ActionError:
                pass
        if resumed:
            return resumed
        if self.runner.running_for_task(task_id):
            raise ActionError(f"task {task.name!r} is running, not paused")
        if task.last_execution_id is not None:
            last = await self.store.get_execution(task.last_execution_id)
            if last.status is ExecutionStatus.CANCELED or (
                last.status is ExecutionStatus.ERROR and last.status_msg == "interrupted"
            ):
                return [await self.run(task_id, kind=TriggerKind.RESUME)]
        raise ActionError(f"task {task.name!r} has nothing to resume")

    async def stop(self, task_id: int, reason: str = "stopped") -> list[int]:
        """Ask the task's running executions to stop (forced after the grace period)."""
        running = self._running(await self.store.get_task(task_id))
        for execution_id in running:
            self.runner.stop(execution_id, reason)
        return running

    async def force_stop(self, task_id: int) -> list[int]:
        """Cancel the task's running executions now, killing their processes."""
        running = self._running(await self.store.get_task(task_id))
        for execution_id in running:
            self.runner.force_stop(execution_id)
        return running


def config_errors_for(specs: Sequence[TaskSpec], modules: ModuleRegistry) -> list[FieldError]:
    """Return the param errors of config tasks (module params are checked after loading)."""
    errors: list[FieldError] = []
    for spec in specs:
        try:
            modules.validate(
                spec.task_module, spec.task_params, path=f"task[{spec.name}].task_params"
            )
        except ValidationError as error:
            errors.extend(error.errors)
    return errors

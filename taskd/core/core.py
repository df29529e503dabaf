"""The operations every front end shares: the config file, both API dialects and the CLI.

Validation, the rules of a write (`taskd.definition`: read-only fields, partial updates,
versions; here: config-owned tasks, names taken), the reads the API serves and the actions
(run, defer, pause, resume, stop, force stop) live here once; the front ends only translate
names, shapes and errors. Nothing above this layer touches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from taskd.clock import Clock
from taskd.core.follow import Follow, LogEvent, LogFollowers
from taskd.definition import Edit, as_id, check_version, merge_definition, named_version
from taskd.errors import (
    ActionError,
    ConflictError,
    FieldError,
    NotFoundError,
    ValidationError,
    join_path,
)
from taskd.model import (
    Execution,
    ExecutionStatus,
    Job,
    LogEntry,
    Overlap,
    Task,
    TaskSource,
    TaskSpec,
    Trigger,
    TriggerKind,
)
from taskd.modules.params import SecretFiles, keep_secrets, redact_params, scrub
from taskd.modules.registry import ModuleRegistry
from taskd.runner import Runner
from taskd.schedule import format_utc
from taskd.scheduler import Scheduler
from taskd.store import Definition, NewExecution, Store, TaskInsert, TaskUpdate
from taskd.store.base import separate_reads
from taskd.taskspec import validate_task_spec

log = structlog.get_logger("taskd.core")

DEFER_TTL = timedelta(days=7)
_ZONE_PAGE = 1000  # tasks read at once when the default timezone changes


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """What reconciling the config file did, by task name."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()  # retired ones the file names again included
    retired: tuple[str, ...] = ()  # left the file: disabled, kept with their history
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


class RemoteActions(Protocol):
    """Actions on runs other cluster nodes run (`taskd.cluster.Cluster`)."""

    async def forward(self, task_id: int, action: str, reason: str | None = None) -> list[int]:
        """Have the nodes running the task's executions apply `action`; return the ids
        acted on ([] if no other node runs the task)."""
        ...


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
        sole_writer: bool = True,
    ) -> None:
        self.store = store
        # Whether only this process writes the store (the daemon's state-dir lock, for
        # SQLite): what lets the API cache reads until the next local commit. A store that
        # several processes write (cluster nodes over one PostgreSQL) must pass False.
        self.sole_writer = sole_writer
        self.scheduler = scheduler
        self.runner = runner
        self.modules = modules
        self.clock = clock
        self.config_source = config_source
        scheduler.set_default_timezone(default_timezone)
        self._followers = LogFollowers()
        # One lock per task with a manual run in progress (see `run`); an entry leaves the
        # dict when its last holder or waiter is done, so the dict stays as small as the
        # number of tasks being started right now.
        self._run_locks: dict[int, tuple[asyncio.Lock, int]] = {}
        # Cluster hook: set by the daemon with a shared (PostgreSQL) store, so that an
        # action on a run another node runs reaches that node.
        self.remote: RemoteActions | None = None

    @staticmethod
    def front_end_reads() -> AbstractContextManager[None]:
        """Mark the reads made inside the block as a front end's (the API's): the store
        serves them apart from the engine's, so they never queue behind its writes."""
        return separate_reads()

    def writes_committed(self) -> int:
        """How many write transactions the store has run in this process: while it stays
        the same, a read gives what it gave before, if this process is the store's only
        writer (`sole_writer`). What the API's read cache keys on (`taskd.api.cache`)."""
        return self.store.batches_written

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
        # In pages, by id: a reload must not hold a million tasks (or the loop) at once.
        last_id = 0
        while page := (
            await self.store.query_tasks(
                where=[("id", ">", last_id)], limit=_ZONE_PAGE, with_total=False
            )
        )[0]:
            last_id = page[-1].id
            for task in page:
                if not task.enabled or not _has_zoneless_schedule(task.spec):
                    continue
                try:
                    schedules = task.schedule_set(zone)
                except ValidationError:  # stored before a rule refused it (a never-firing cron)
                    continue
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

    def validate(
        self, raw: Mapping[str, Any], *, path: str = "", files: SecretFiles | None = None
    ) -> TaskSpec:
        """Validate a task definition, its module params included. Raises ValidationError.

        Secret files the params name are taken from `files` (see `ModuleRegistry.validate`:
        without them they are read here, blocking; `edit` reads them in a thread first)."""
        spec = validate_task_spec(
            raw,
            path=path,
            default_timezone=self.default_timezone,
            known_modules=self.modules.names(),
        )
        self.check_params(spec, path=path, files=files)
        return spec

    def shown(self, task: Task) -> Task:
        """`task` as the API shows it to every caller: its module's secret params (the
        `secret` key of a param definition) masked. The engine uses the stored task."""
        params = task.spec.get("task_params")
        try:
            defs = self.modules.get(task.module).params
        except NotFoundError:
            return task
        if not isinstance(params, Mapping):
            return task
        masked = redact_params(defs, params)
        if masked == params:
            return task
        return dataclasses.replace(task, spec={**task.spec, "task_params": masked})

    def _merged(
        self, changes: Mapping[str, Any], task: Task | None, path: str = ""
    ) -> dict[str, Any]:
        """`merge_definition`, with the masks of secret params a client sent back (it read
        the task through the API) replaced by the stored values."""
        raw = merge_definition(changes, task)
        sent = changes.get("task_params")
        if task is None or not isinstance(sent, Mapping) or raw.get("task_module") != task.module:
            return raw
        stored = task.spec.get("task_params")
        try:
            defs = self.modules.get(task.module).params
        except NotFoundError:
            return raw
        if isinstance(stored, Mapping):
            raw["task_params"] = keep_secrets(
                defs, sent, stored, path=join_path(path, "task_params")
            )
        return raw

    def check_params(
        self, spec: TaskSpec, *, path: str = "", files: SecretFiles | None = None
    ) -> None:
        """Validate a spec's params against its module. Raises ValidationError."""
        self.modules.validate(
            spec.task_module,
            spec.task_params,
            path=join_path(path, "task_params"),
            files=files,
            task=spec.to_json() if self.modules.checks_task(spec.task_module) else None,
            task_path=path,
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
        check_version(task, None if expected_version is None else expected_version + 1)
        spec_json = spec.to_json()
        if spec_json == task.spec and expected_version is None and task.retired_at is None:
            return task  # nothing changes: no new version, no write
        if task.retired_at is None and _schedule_fields(spec_json) == _schedule_fields(task.spec):
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
        """Delete a task with its history; its running executions are stopped first (forced).

        ConflictError for a config-defined task (unless `as_config`) that is not retired: a
        retired one is gone from the file, and a delete is how it is removed for good.
        """
        task = await self.store.get_task(task_id)
        if task.retired_at is None:
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

    async def find(self, name_or_id: str | int, *, owner: str | None = None) -> Task:
        """Return a task by id or name. NotFoundError if there is none, or if `owner` is
        given and may not see it (see `visible_to`: another owner's task is not disclosed).

        Digits that cannot be an id (0, past the store's integers, not ASCII) can still
        be a name.
        """
        task_id = as_id(name_or_id)
        if task_id is not None:
            try:
                task = await self.store.get_task(task_id)
            except NotFoundError:
                pass
            else:
                if visible_to(task, owner):
                    return task
        found = await self.store.find_task(str(name_or_id))
        if found is None or not visible_to(found, owner):
            raise NotFoundError(f"no task {name_or_id!r}")
        return found

    # -- writes the front ends ask for ----------------------------------------------------

    async def edit(
        self,
        changes: Mapping[str, Any],
        task: Task | None = None,
        *,
        path: str = "",
        version_required: bool = False,
    ) -> Edit:
        """Check a write: `changes` to `task` (merged over its definition), or a new task.

        For an update, `changes` may name a `version` (current + 1; required if
        `version_required`). Raises ValidationError, paths under `path`, for a version that
        is no integer or an invalid definition. What the stored data may refuse is checked
        by `check_edits`. Secret files the params name are read in a thread, not on the loop.
        """
        version = None
        if task is not None:
            version = named_version(changes, required=version_required, path=path)
        merged = self._merged(changes, task, path)
        files = await self.modules.read_files(merged.get("task_module"), merged.get("task_params"))
        spec = self.validate(merged, path=path, files=files)
        return Edit(task, spec, version, changes=dict(changes), path=path)

    async def check_edits(self, edits: Sequence[Edit]) -> None:
        """Raise ConflictError for the first edit the store would refuse: a config-defined
        task (naming the file), a version other than current + 1, a name another task or an
        earlier edit has.

        The store checks again when it writes; checking first keeps a refused edit from
        leaving the edits before it written.
        """
        names: dict[str, int] = {}
        for index, edit in enumerate(edits):
            if edit.task is not None:
                self._check_editable(edit.task, False)
                check_version(edit.task, edit.version)
            name = edit.spec.name
            if name in names:
                raise ConflictError(f"items {names[name]} and {index} are both named {name!r}")
            names[name] = index
            holder = await self.store.find_task(name)
            if holder is not None and (edit.task is None or holder.id != edit.task.id):
                retired = " (a retired config task: delete it first)" if holder.retired_at else ""
                raise ConflictError(f"a task named {name!r} exists already{retired}")

    async def save(self, edits: Sequence[Edit], *, by: str | None = None) -> list[Task]:
        """Write `edits` in order, all or nothing, and return the tasks as stored.

        `check_edits` runs first (its messages name the item); then the store writes every
        edit in one transaction that checks names and versions again and merges each
        update's changes over the task as stored then, so concurrent writes neither leave a
        refused batch half written nor lose a field another partial update changed. Raises
        what `check_edits` raises, or the same refusals found at write time (ConflictError,
        ValidationError for changes that no longer fit the stored task); nothing is
        written then.
        """
        await self.check_edits(edits)
        now = self.clock.now()
        writes: list[TaskInsert | TaskUpdate] = []
        for edit in edits:
            if edit.task is None:
                definition = self._definition(edit.spec, None, now)
                assert definition is not None
                writes.append(TaskInsert(source=TaskSource.API, definition=definition))
            else:
                writes.append(
                    TaskUpdate(
                        task_id=edit.task.id, build=functools.partial(self._rebuild, edit, now)
                    )
                )
        saved = await self.store.write_tasks(writes, now=now, by=by)
        for task in saved:
            self.scheduler.task_changed(task.id, task)
        return saved

    def _rebuild(self, edit: Edit, now: datetime, stored: Task) -> Definition | None:
        """What `edit` makes of `stored` (the task inside the write's transaction): pure.

        The same version means the same definition `edit` was checked against, so its spec
        stands; otherwise its changes are merged over the stored definition and validated
        again. None: nothing changes.
        """
        assert edit.task is not None
        self._check_editable(stored, False)
        check_version(stored, edit.version)
        spec = edit.spec
        if stored.version != edit.task.version:
            spec = self.validate(self._merged(edit.changes, stored, edit.path), path=edit.path)
        return self._definition(spec, stored, now, versioned=edit.version is not None)

    def _definition(
        self, spec: TaskSpec, stored: Task | None, now: datetime, *, versioned: bool = False
    ) -> Definition | None:
        """The row `spec` makes of `stored` (or of a new task); None if an unversioned write
        changes nothing. The stored `next_run_at` stays while schedules, `next_run_at` and
        `enabled` do, so an edit of params does not move (or lose) a due slot."""
        spec_json = spec.to_json()
        if stored is not None and spec_json == stored.spec and not versioned:
            return None
        if stored is not None and _schedule_fields(spec_json) == _schedule_fields(stored.spec):
            next_run_at = stored.next_run_at
        else:
            next_run_at = self.next_run_at(spec, now)
        return Definition(
            name=spec.name, spec=spec_json, enabled=spec.enabled, next_run_at=next_run_at
        )

    async def apply_config(self, specs: Sequence[TaskSpec]) -> ConfigChanges:
        """Make the stored config-defined tasks match `specs`: add, update, retire.

        A config task the file no longer names is retired, never deleted (an empty or
        truncated file must not take the history with it): disabled, its runs not started
        yet skipped, a running one left to finish, kept with its id, executions and log,
        until the file names it again (brought back, same id) or a delete removes it.
        """
        added, updated, retired, refused = [], [], [], []
        wanted = {spec.name: spec for spec in specs}
        now = self.clock.now()
        for task in await self.store.list_tasks(source=TaskSource.CONFIG):
            if task.name not in wanted and task.retired_at is None:
                retiring = await self.store.retire_task(task.id, now=now, by="config")
                self.scheduler.task_changed(task.id, retiring)
                retired.append(task.name)
                log.warning(
                    "config task retired: it left the config file; its history is kept",
                    task=task.name,
                    task_id=task.id,
                )
        for spec in specs:
            existing = await self.store.find_task(spec.name)
            if existing is None:
                await self.create_task(spec, source=TaskSource.CONFIG, by="config")
                added.append(spec.name)
            elif existing.source is not TaskSource.CONFIG:
                log.error("config task name is taken by an API task; left alone", task=spec.name)
                refused.append(spec.name)
            elif existing.spec != spec.to_json() or existing.retired_at is not None:
                await self.update_task(existing.id, spec, by="config", as_config=True)
                updated.append(spec.name)
        return ConfigChanges(tuple(added), tuple(updated), tuple(retired), tuple(refused))

    # -- actions --------------------------------------------------------------------------

    async def run(
        self,
        task_id: int,
        metadata: Mapping[str, Any] | None = None,
        *,
        kind: TriggerKind = TriggerKind.MANUAL,
    ) -> int:
        """Start a run of the task now; return its execution id.

        ActionError if the task is retired, or runs and its overlap policy is `skip`.
        Concurrent runs of one task are serialised: the overlap check, the insert of the
        execution row and the hand-over to the scheduler happen as one step, so of many
        `run`s sent at once on a `skip` task exactly one starts.
        """
        async with self._run_lock(task_id):
            return await self._run_locked(task_id, metadata, kind)

    @contextlib.asynccontextmanager
    async def _run_lock(self, task_id: int) -> AsyncIterator[None]:
        # A per-task asyncio lock rather than a conditional insert in the store: what
        # "the task runs" means lives in this process (the runner's running and queued
        # jobs, the scheduler's waiting ones, retries not due yet), not in rows alone.
        lock, users = self._run_locks.get(task_id, (asyncio.Lock(), 0))
        self._run_locks[task_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._run_locks[task_id]
            if users == 1:
                del self._run_locks[task_id]
            else:
                self._run_locks[task_id] = (lock, users - 1)

    async def _run_locked(
        self, task_id: int, metadata: Mapping[str, Any] | None, kind: TriggerKind
    ) -> int:
        # Read apart from the engine's writes (a committed row by its key): a run's start
        # waits for no batch to reach its task.
        with separate_reads():
            task = await self.store.get_task(task_id)
        if task.retired_at is not None:
            raise ActionError(
                f"task {task.name!r} is retired: it left {self.config_source}; name it there"
                " again to run it"
            )
        if task.options.overlap is Overlap.SKIP and (
            self.runner.busy_with_task(task_id) or self.scheduler.pending_for_task(task_id)
        ):
            raise ActionError(f"task {task.name!r} is running and its overlap policy is 'skip'")
        now = self.clock.now()
        metadata = self._scrubbed(task, metadata)
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
        task = await self.store.get_task(task_id)
        now = self.clock.now()
        return await self.store.create_defer(
            task_id, self._scrubbed(task, metadata), now, now + DEFER_TTL
        )

    def _scrubbed(self, task: Task, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        """A run's metadata as stored and shown: a secret value of the task's params that a
        client copied into it is masked (it would show in every execution listing)."""
        params = task.spec.get("task_params")
        if not metadata or not isinstance(params, Mapping):
            return dict(metadata or {})
        scrubbed: dict[str, Any] = scrub(metadata, self.modules.secret_values(task.module, params))
        return scrubbed

    async def run_defer(self, defer_id: str) -> int:
        """Start a deferred run (once); return its execution id. DeferError if not usable."""
        task_id, metadata = await self.store.use_defer(defer_id, self.clock.now())
        return await self.run(task_id, metadata, kind=TriggerKind.DEFER)

    def _running(self, task: Task) -> list[int]:
        running = self.runner.running_for_task(task.id)
        if not running:
            raise ActionError(f"task {task.name!r} has no running execution")
        return running

    async def _forwarded(self, task_id: int, action: str, reason: str | None = None) -> list[int]:
        """Cluster hook: when no run of the task runs here, send `action` to the nodes that
        run it; the ids they acted on ([] without a cluster or when none runs elsewhere)."""
        if self.remote is None or self.runner.running_for_task(task_id):
            return []
        return await self.remote.forward(task_id, action, reason)

    async def pause(self, task_id: int) -> list[int]:
        """Pause the task's running executions. ActionError if none runs or all are paused."""
        task = await self.store.get_task(task_id)
        forwarded = await self._forwarded(task_id, "pause")
        if forwarded:
            return forwarded
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
        forwarded = await self._forwarded(task_id, "resume")
        if forwarded:
            return forwarded
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
        task = await self.store.get_task(task_id)
        forwarded = await self._forwarded(task_id, "stop", reason)
        if forwarded:
            return forwarded
        running = self._running(task)
        for execution_id in running:
            self.runner.stop(execution_id, reason)
        return running

    async def force_stop(self, task_id: int) -> list[int]:
        """Cancel the task's running executions now, killing their processes."""
        task = await self.store.get_task(task_id)
        forwarded = await self._forwarded(task_id, "force_stop")
        if forwarded:
            return forwarded
        running = self._running(task)
        for execution_id in running:
            self.runner.force_stop(execution_id)
        return running

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: int, *, owner: str | None = None) -> Task:
        """Return the task with id `task_id`. NotFoundError if there is none, or if `owner`
        is given and may not see it."""
        task = await self.store.get_task(task_id)
        if not visible_to(task, owner):
            # Word for word what an unknown id gets: the task's existence is not disclosed.
            raise NotFoundError(f"task {task_id} not found")
        return task

    async def query_tasks(
        self,
        *,
        where: Sequence[tuple[str, str, Any]] = (),
        order: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        owner: str | None = None,
    ) -> tuple[list[Task], int]:
        """Return one page of tasks and how many match in all; with `owner`, only the
        tasks it may see (its own API tasks and the config tasks).

        `where` holds (field, operator, value): a field of `TASK_QUERY_FIELDS`, an operator
        of `=`, `!=`, `<`, `<=`, `>`, `>=`, `in` (value a list) or `like`. `order` holds
        (field, descending); ties go by id. ValueError for an unknown field or operator.
        """
        return await self.store.query_tasks(
            where=where, order=order, limit=limit, offset=offset, owner=owner
        )

    async def with_last_executions(
        self, tasks: Sequence[Task]
    ) -> list[tuple[Task, Execution | None]]:
        """Pair each task with its last execution (read in one query)."""
        ids = [t.last_execution_id for t in tasks if t.last_execution_id is not None]
        executions = await self.store.get_executions(ids) if ids else {}
        return [
            (t, None if t.last_execution_id is None else executions.get(t.last_execution_id))
            for t in tasks
        ]

    async def find_with_last_execution(
        self, name_or_id: str | int, *, owner: str | None = None
    ) -> tuple[Task, Execution | None]:
        """`find`, with the task's last execution (a task id reads both in one query)."""
        task_id = as_id(name_or_id)
        if task_id is not None:
            found = await self.store.get_task_with_last_execution(task_id)
            if found is not None and visible_to(found[0], owner):
                return found
        [pair] = await self.with_last_executions([await self.find(name_or_id, owner=owner)])
        return pair

    def describe_modules(self) -> list[dict[str, Any]]:
        """The modules tasks can use, with their params (JSON)."""
        return self.modules.describe()

    async def list_executions(
        self, task_id: int, *, limit: int = 50, offset: int = 0
    ) -> list[Execution]:
        """Return a task's executions, newest first (queued ones included), paged."""
        return await self.store.list_executions(task_id, limit=limit, offset=offset)

    async def get_execution(
        self, execution_id: int, *, of: Task | None = None, owner: str | None = None
    ) -> Execution:
        """Return one execution. NotFoundError if there is none, if it is not one of the
        task `of` (when given), or if its task is not visible to `owner` (when given)."""
        if of is None:
            execution = await self.store.get_execution(execution_id)
            if owner is not None:
                try:
                    await self.get_task(execution.task_id, owner=owner)
                except NotFoundError:
                    raise NotFoundError(f"execution {execution_id} not found") from None
            return execution
        with contextlib.suppress(NotFoundError):
            execution = await self.store.get_execution(execution_id)
            if execution.task_id == of.id:
                return execution
        raise NotFoundError(f"task {of.name!r} has no execution {execution_id}")

    async def read_log(
        self,
        task_id: int,
        *,
        offset: int = 0,
        limit: int = 100,
        execution_id: int | None = None,
    ) -> list[LogEntry]:
        """Return a task's log entries from index `offset` on, oldest first, at most
        `limit`; only those of `execution_id` if given."""
        return await self.store.read_log(
            task_id, offset=offset, limit=limit, execution_id=execution_id
        )

    async def newest_execution_id(self, task_id: int) -> int | None:
        """The id of the task's newest execution, queued ones included (its
        `last_execution_id` names the latest that started), or None if it has none."""
        newest = await self.store.list_executions(task_id, limit=1)
        return newest[0].id if newest else None

    async def current_execution(self, task_id: int) -> Execution | None:
        """The execution "the log of the task" means: the newest running or paused one,
        else the newest that is not a skipped slot, else the newest; None if it has none."""
        executions = await self.store.list_executions(task_id, limit=50)
        active = {ExecutionStatus.RUNNING, ExecutionStatus.PAUSED}
        for found in (
            next((e for e in executions if e.status in active), None),
            next((e for e in executions if e.status is not ExecutionStatus.SKIPPED), None),
        ):
            if found is not None:
                return found
        return executions[0] if executions else None

    # -- following the log ----------------------------------------------------------------

    def committed(self, *_batch: object) -> None:
        """Wake the log followers: the store committed a batch (its `on_batch` hook)."""
        self._followers.committed()

    def stop_following(self) -> None:
        """End every log follow (with `Closing`): the daemon is shutting down."""
        self._followers.stop()

    def follow_log(
        self,
        task_id: int,
        *,
        mode: Follow,
        offset: int | None = None,
        execution_id: int | None = None,
        idle_sec: float = 1.0,
    ) -> AsyncGenerator[LogEvent, None]:
        """Yield a task's log entries as they are committed; see `LogFollowers.follow`."""
        return self._followers.follow(
            self,
            task_id,
            mode=mode,
            offset=offset,
            execution_id=execution_id,
            idle_sec=idle_sec,
        )

    async def ending(self, execution_id: int) -> tuple[bool, ExecutionStatus | None]:
        """Whether the execution has ended, and how: `(False, None)` while it is queued,
        runs or its ending is not recorded yet; `(True, status)` once it has ended and the
        store has committed everything it logged, so a `read_log` after this sees its last
        lines (status None if the execution is gone, deleted with its task).
        """
        if self.runner.is_active(execution_id):
            return False, None
        try:
            execution: Execution | None = await self.store.get_execution(execution_id)
        except NotFoundError:
            execution = None
        if execution is not None and not execution.status.finished:
            return False, None
        await self.store.flush()
        return True, None if execution is None else execution.status


def visible_to(task: Task, owner: str | None) -> bool:
    """Whether the principal named `owner` may see and act on `task`: its own API tasks
    (`created_by`, set when the task was created, is the owner) and every config task;
    `owner` None (an admin, the trusted socket, the engine): every task."""
    return owner is None or task.source is TaskSource.CONFIG or task.created_by == owner


def config_errors_for(specs: Sequence[TaskSpec], modules: ModuleRegistry) -> list[FieldError]:
    """Return the param errors of config tasks (module params are checked after loading)."""
    errors: list[FieldError] = []
    for spec in specs:
        try:
            modules.validate(
                spec.task_module,
                spec.task_params,
                path=f"task[{spec.name}].task_params",
                task=spec.to_json() if modules.checks_task(spec.task_module) else None,
                task_path=f"task[{spec.name}]",
            )
        except ValidationError as error:
            errors.extend(error.errors)
    return errors

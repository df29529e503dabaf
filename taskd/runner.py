"""The runner: runs executions as coroutines, at most `max_running` at once.

Jobs wait in a queue ordered by priority (higher first), then due time. Starting a batch of
jobs commits them as `running` in one transaction, then starts their modules: a job is never
started without the store knowing, so a crash can only leave it `running` (and recovery marks
it interrupted), never silently `queued` for a second start.

Every ending is recorded, not raised: a module's exception, a timeout, a stop or a forced stop
each become the execution's final status, recorded by the execution's own task: once its
module has ended (`ended` set) nothing cancels that task any more (a force stop and a stop's
grace timer leave an ended execution alone), so even a cancelled execution records how it
ended, without a second task per execution.

An ending the store cannot record now (`StoreUnavailableError`: the disk is full, say) is
retried with backoff (`ENDING_RETRY_FIRST_SEC`, doubling up to `ENDING_RETRY_MAX_SEC`)
until it is recorded. Meanwhile the execution keeps its place among the running ones (so
at most `max_running` endings wait, and no more start while they do), its task counts as
busy (overlap `skip` skips, `stop` answers that it ended and waits to be recorded), and
its outcome (retries, notifications) is told only once the ending is recorded, with the
time it ended. Starts the store cannot record are retried the same way, jobs kept queued.

Commit ahead, release at the instant: the scheduler hands the runner an instant's jobs
during its look-ahead (`reserve`). Their starts are committed then, with `started_at` = the
instant (see "Starts committed ahead" in `taskd.store.base`), their coroutines created and
left waiting on one gate per instant, which opens at the instant (`_gate_loop`, or the
scheduler's tick with the engine's clock): at the instant nothing is left but the wake-ups.
A reserved run counts as running (its place, its task busy). One taken back before its
instant (`take_back`: its task changed; shutdown) never started; shutdown returns it to
`queued` in the store (`Store.unstart_many`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from taskd.clock import Clock, from_micros, to_micros
from taskd.context import ExecutionContext
from taskd.errors import ActionError, StoreUnavailableError
from taskd.model import ExecutionStatus, Job, Outcome
from taskd.modules.base import LogLevel, Module, ModuleError
from taskd.modules.params import SecretFiles
from taskd.modules.registry import ModuleRegistry
from taskd.store import Store

log = structlog.get_logger("taskd.runner")

# Endings and starts the store could not record are tried again after this delay, doubling
# up to the maximum, until the store takes them.
ENDING_RETRY_FIRST_SEC = 0.1
ENDING_RETRY_MAX_SEC = 10.0


@dataclass(slots=True, eq=False)
class _Running:
    job: Job
    context: ExecutionContext
    task: asyncio.Task[None] | None = None
    forced_reason: str | None = None  # why the runner cancelled it, if it did
    stop_reason: str | None = None
    grace_timer: asyncio.Task[None] | None = None  # forces the stop after the grace
    # Set once ended and recorded; made only when someone waits for it (most never do).
    finished: asyncio.Event | None = None
    done: bool = False  # ended and recorded (or given up)
    ended: ExecutionStatus | None = None  # how the module ended, once it has
    unrecorded: str | None = None  # why the store has not recorded the ending yet
    gate: _Gate | None = None  # reserved: waits for its instant (None once released)
    taken_back: bool = False  # reserved, then taken back before its instant: never started

    def finished_event(self) -> asyncio.Event:
        """The event set once the execution ended and its ending was recorded."""
        if self.finished is None:
            self.finished = asyncio.Event()
            if self.done:
                self.finished.set()
        return self.finished


@dataclass(slots=True, eq=False)
class _Gate:
    """The reserved runs of one instant, waiting together; opened at the instant."""

    at_us: int
    event: asyncio.Event = field(default_factory=asyncio.Event)
    members: dict[int, _Running] = field(default_factory=dict)


class RunEvents:
    """Who hears of the runner's starts and endings; subscribed once, where the engine is built.

    Listeners are called in the order they subscribed. A start listener gets the job and how
    late it starts (seconds); an end listener gets the `Outcome` after the final status was
    committed and may be a coroutine function (awaited before the next listener). A failing
    listener is logged and does not keep the others from hearing.
    """

    def __init__(self) -> None:
        self._started: list[Callable[[Job, float], object]] = []
        self._ended: list[Callable[[Outcome], object]] = []

    def on_started(self, listener: Callable[[Job, float], object]) -> None:
        """Call `listener(job, lateness_sec)` as each module starts (keep it quick)."""
        self._started.append(listener)

    def on_ended(self, listener: Callable[[Outcome], object]) -> None:
        """Call (or await) `listener(outcome)` after each ending was recorded."""
        self._ended.append(listener)

    def started(self, job: Job, lateness_sec: float) -> None:
        """Tell the start listeners."""
        for listener in self._started:
            try:
                listener(job, lateness_sec)
            except Exception:
                log.exception("start listener failed", execution_id=job.execution_id)

    async def ended(self, outcome: Outcome) -> None:
        """Tell the end listeners, in order."""
        for listener in self._ended:
            try:
                result = listener(outcome)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("outcome listener failed", execution_id=outcome.job.execution_id)


class Runner:
    """Starts queued jobs within `max_running`, runs them, records their endings.

    Starts and endings are told to `events` (see `RunEvents`).
    """

    def __init__(
        self,
        *,
        store: Store,
        modules: ModuleRegistry,
        clock: Clock,
        max_running: int,
        stop_grace_sec: float,
        events: RunEvents | None = None,
        dispatcher: str | None = None,
    ) -> None:
        self.store = store
        self.modules = modules
        self.clock = clock
        self.max_running = max_running
        self.stop_grace_sec = stop_grace_sec
        self.events = events if events is not None else RunEvents()
        self.dispatcher = dispatcher or socket.gethostname()
        self._queue: list[tuple[int, int, int, Job]] = []
        self._queued_ids: set[int] = set()
        self._sequence = itertools.count()
        self._running: dict[int, _Running] = {}
        # Per task, the ids of its queued and running executions: overlap checks are O(1).
        self._queued_by_task: dict[int, set[int]] = {}
        self._running_by_task: dict[int, set[int]] = {}
        # Jobs taken from the queue whose start is being recorded: neither queued nor
        # running for that moment, yet the task is busy (an overlap check must see them).
        self._starting_by_task: Counter[int] = Counter()
        # Validated params by (task id, version): a task's definition changes its version.
        self._params: dict[tuple[int, int], Mapping[str, Any]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._hurry = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._gate_task: asyncio.Task[None] | None = None
        self._start_retry_sec = ENDING_RETRY_FIRST_SEC
        # Reserved runs by instant (µs), and the instants in a heap: see `reserve`.
        self._gates: dict[int, _Gate] = {}
        self._gate_times: list[int] = []
        self._gates_changed = asyncio.Event()
        # Set at each hand-over (a batch of starts begun, an instant released, a claim
        # reserved or a due time changed): the API's engine-first window waits on it.
        self.handover = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Runner:
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="taskd-runner")
        self._gate_task = asyncio.create_task(self._gate_loop(), name="taskd-runner-gates")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(0)

    def hurry(self) -> None:
        """Cut a shutdown's grace short: stop running executions now."""
        self._hurry.set()

    async def shutdown(self, grace_sec: float) -> None:
        """Stop starting jobs; give running ones `grace_sec` to finish, then stop them.

        A stopped module gets the cooperative stop (and `stop_grace_sec`) before it is
        cancelled; its state is whatever it saved. Queued jobs stay `queued` in the store
        and are taken up by the next start.
        """
        self._accepting = False
        self._queue.clear()
        self._queued_ids.clear()
        # Reserved runs whose instant has not come never started: back to `queued` for the
        # next start (if this write fails, recovery applies the same rule).
        unstarted = [job for gate in list(self._gates.values()) for job in self._take_gate(gate)]
        if unstarted:
            try:
                await self.store.unstart_many([(j.execution_id, j.task.id) for j in unstarted])
            except Exception as error:
                log.warning(
                    "could not take back starts committed ahead; the next start does",
                    jobs=len(unstarted),
                    error=str(error),
                )
        if self._gate_task is not None:
            self._gate_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gate_task
            self._gate_task = None
        if self._running and grace_sec > 0 and not self._hurry.is_set():
            waiters = [
                asyncio.ensure_future(r.finished_event().wait()) for r in self._running.values()
            ]
            all_done = asyncio.ensure_future(asyncio.wait(waiters))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait([all_done, hurry], timeout=grace_sec, return_when="FIRST_COMPLETED")
            for future in (*waiters, all_done, hurry):
                future.cancel()
        for running in list(self._running.values()):
            self._request_stop(running, "daemon shutting down")
        if self._running:
            await asyncio.wait(
                [asyncio.ensure_future(r.finished_event().wait()) for r in self._running.values()],
                timeout=self.stop_grace_sec + 5,
            )
        for running in list(self._running.values()):
            if running.unrecorded is not None:
                log.error(
                    "taskd stops with an ending the store did not record: the execution "
                    "stays running in the store and is marked interrupted at the next start",
                    execution_id=running.job.execution_id,
                    status=str(running.ended),
                    reason=running.unrecorded,
                )
                # Its retries end here, not against a closed store (a traceback per run).
                # Its own task retries the ending: cancelled here, the only thing that
                # cancels an execution whose module has ended (see the module docstring).
                if running.task is not None:
                    running.task.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    # -- queries --------------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        """How many executions run now (not those reserved for an instant to come)."""
        return len(self._running) - self.reserved_count

    @property
    def reserved_count(self) -> int:
        """How many runs are reserved for an instant to come: their starts are committed,
        their places taken, their modules not started yet (see `reserve`)."""
        return sum(len(gate.members) for gate in self._gates.values())

    starting = 0  # jobs taken from the queue whose start is being recorded (one batch)

    @property
    def queued_count(self) -> int:
        """How many jobs wait for a free place."""
        return len(self._queue)

    @property
    def unrecorded_count(self) -> int:
        """How many executions have ended but wait for the store to record their ending
        (counted in `running_count` too: they keep their place until recorded)."""
        return sum(1 for running in self._running.values() if running.unrecorded is not None)

    def busy_with_task(self, task_id: int) -> bool:
        """Whether any execution of the task runs (or has ended and waits for its ending to
        be recorded), is being started or waits in the queue (O(1))."""
        return (
            task_id in self._running_by_task
            or task_id in self._queued_by_task
            or task_id in self._starting_by_task
        )

    def running_for_task(self, task_id: int) -> list[int]:
        """Return the ids of the task's executions that run now (or have ended and wait
        for their ending to be recorded)."""
        return sorted(self._running_by_task.get(task_id, ()))

    def remove_queued(self, task_id: int) -> list[Job]:
        """Take the task's jobs out of the queue (it was deleted or disabled); return them."""
        if not self._queued_by_task.pop(task_id, None):
            return []
        removed = [entry[3] for entry in self._queue if entry[3].task.id == task_id]
        self._queue = [entry for entry in self._queue if entry[3].task.id != task_id]
        heapq.heapify(self._queue)
        for job in removed:
            self._queued_ids.discard(job.execution_id)
        return removed

    def running_ids(self) -> list[int]:
        """Ids of the executions running now. Cluster hook (`taskd.cluster`): a node found
        declared dead stops them."""
        return sorted(self._running)

    def is_active(self, execution_id: int) -> bool:
        """Whether the execution is queued here or running."""
        return execution_id in self._running or execution_id in self._queued_ids

    async def drain(self) -> None:
        """Return once no job is queued or running (for tests and benchmarks)."""
        while self._queue or self._running:
            self._idle.clear()
            await self._idle.wait()

    # -- submitting and dispatching -------------------------------------------------------

    def prepare(self, job: Job, files: SecretFiles | None = None) -> Mapping[str, Any] | None:
        """Validate the job's params against its module now (cached per task version).

        The scheduler calls it when it claims a slot ahead of time, so that at the due
        instant nothing but the start itself is left. Raises ValidationError. Params that
        name secret files are checked only with `files` (their contents, read off the loop
        by `prepare_async`), for each run (a file may have been rotated): None without.
        """
        key = (job.task.id, job.task.version)
        params = self._params.get(key)
        if params is None:
            task = job.task
            if files is None and self.modules.secret_files(task.module, task.task_params):
                return None
            params = self.modules.validate(
                task.module, task.task_params, path="task_params", files=files
            )
            if files is not None:
                return params
            if len(self._params) >= 10_000:
                self._params.clear()
            self._params[key] = params
        return params

    async def prepare_async(self, job: Job) -> Mapping[str, Any]:
        """`prepare`, with the secret files the params name read in a thread first."""
        files = await self.modules.read_files(job.task.module, job.task.task_params)
        params = self.prepare(job, files)
        assert params is not None  # with the files at hand, or none named
        return params

    def submit(self, job: Job) -> None:
        """Queue a job; it starts when a place is free, by priority then due time."""
        if not self._accepting or job.execution_id in self._queued_ids:
            return
        priority = job.task.options.priority
        heapq.heappush(self._queue, (-priority, to_micros(job.due), next(self._sequence), job))
        self._queued_ids.add(job.execution_id)
        self._queued_by_task.setdefault(job.task.id, set()).add(job.execution_id)
        self._wake.set()

    # -- commit ahead, release at the instant ----------------------------------------------

    def free_places(self) -> int:
        """Places free for a reservation now: none while jobs wait in the queue."""
        if self._queue or not self._accepting:
            return 0
        return max(0, self.max_running - len(self._running) - self.starting)

    async def reserve(self, jobs: list[Job], at_us: int) -> list[Job]:
        """Commit the starts of `jobs`, all due at `at_us`, now; start them at `at_us`.

        The caller (the scheduler, during its look-ahead) has applied the overlap policy:
        each job would be handed to `submit` at its instant. Takes as many as there are
        free places, by priority; returns the others, for the caller to hand over at the
        instant as before. A job whose params no longer fit its module is recorded as an
        error. If the store cannot record the starts, every job is returned.
        """
        free = self.free_places()
        if free <= 0 or not jobs:
            return jobs
        if len(jobs) > free:
            jobs = sorted(jobs, key=lambda job: -job.task.options.priority)
        taken, rest = jobs[:free], jobs[free:]
        startable: list[tuple[Job, Mapping[str, Any]]] = []
        refused: list[tuple[Job, str]] = []
        for job in taken:
            try:
                params = self.prepare(job)
                if params is None:  # it names secret files: read now, in a thread
                    params = await self.prepare_async(job)
                startable.append((job, params))
            except Exception as error:  # the stored definition no longer fits the module
                refused.append((job, str(error)))
        free = self.free_places()  # reading secret files awaited: places may have gone
        if len(startable) > free:
            rest = [job for job, _ in startable[free:]] + rest
            startable = startable[:free]
        gate = self._gates.get(at_us)
        if gate is None:
            gate = self._gates[at_us] = _Gate(at_us)
            heapq.heappush(self._gate_times, at_us)
            self._gates_changed.set()
        # Registered before the commit is awaited: the places and the tasks are taken.
        members: list[_Running] = []
        for job, job_params in startable:
            context = ExecutionContext(
                store=self.store,
                clock=self.clock,
                job=job,
                params=job_params,
                stop_grace_sec=self.stop_grace_sec,
                secrets=self.modules.secret_values(job.task.module, job_params),
            )
            running = _Running(job=job, context=context, gate=gate)
            self._running[job.execution_id] = running
            self._running_by_task.setdefault(job.task.id, set()).add(job.execution_id)
            gate.members[job.execution_id] = running
            members.append(running)
        try:
            started = await self.store.mark_started_many(
                [(job.execution_id, job.task.id) for job, _ in startable],
                from_micros(at_us),
                self.dispatcher,
            )
        except Exception as error:
            for running in members:
                self._unregister(running)
                gate.members.pop(running.job.execution_id, None)
            if not gate.members and not gate.event.is_set():
                self._gates.pop(at_us, None)
            if not isinstance(error, StoreUnavailableError):
                log.exception("could not record starts ahead; they start at their instant")
            return jobs
        if started is not None:
            # Cluster hook (`taskd.cluster`): a shared store started only the executions
            # this node owns; another node took the others over (or they ended).
            for running in [r for r in members if r.job.execution_id not in started]:
                self._unregister(running)
                gate.members.pop(running.job.execution_id, None)
                members.remove(running)
        for running in members:
            if running.taken_back:
                continue  # its task changed while the starts were being committed
            running.task = asyncio.create_task(
                self._execute(running), name=f"taskd-execution-{running.job.execution_id}"
            )
        if gate.event.is_set():  # the instant passed during the commit
            self._notify_started([r.job for r in members])
        self.handover.set()
        await self._end_refused(refused)
        return rest

    async def _end_refused(self, refused: Sequence[tuple[Job, str]]) -> None:
        """Record runs whose stored definition no longer fits their module as `error`."""
        for job, reason in refused:
            if await self._record(job, ExecutionStatus.ERROR, reason):
                await self._tell(
                    Outcome(
                        job=job,
                        status=ExecutionStatus.ERROR,
                        status_msg=reason,
                        stopped_by_user=False,
                    )
                )

    def _unregister(self, running: _Running) -> None:
        self._running.pop(running.job.execution_id, None)
        _discard(self._running_by_task, running.job.task.id, running.job.execution_id)
        self._wake.set()

    def next_gate_us(self) -> int | None:
        """The earliest instant reserved runs wait for, or None."""
        while self._gate_times and self._gate_times[0] not in self._gates:
            heapq.heappop(self._gate_times)
        return self._gate_times[0] if self._gate_times else None

    def release_due(self, now_us: int) -> int:
        """Open the gates of every instant up to `now_us`; return how many runs began."""
        count = 0
        while (at_us := self.next_gate_us()) is not None and at_us <= now_us:
            heapq.heappop(self._gate_times)
            gate = self._gates.pop(at_us)
            gate.event.set()  # every member's first step runs next, in one turn of the loop
            jobs = [running.job for running in gate.members.values() if running.task]
            for running in gate.members.values():
                running.gate = None
            count += len(jobs)
            # After the members' first steps: the listeners must not delay a start.
            asyncio.get_running_loop().call_soon(self._notify_started, jobs)
        return count

    def _notify_started(self, jobs: list[Job]) -> None:
        now = self.clock.now()
        for job in jobs:
            self.events.started(job, (now - job.due).total_seconds())
        self.handover.set()

    def take_back(self, task_id: int) -> list[Job]:
        """Take the task's reserved runs whose instant has not come back (its definition
        changed): they never started, their rows stay `running` with a future start until
        the caller hands them over again or ends them. Returns their jobs."""
        taken: list[Job] = []
        for execution_id in list(self._running_by_task.get(task_id, ())):
            running = self._running[execution_id]
            if running.gate is not None and not running.gate.event.is_set():
                taken.append(self._take(running))
        return taken

    def _take_gate(self, gate: _Gate) -> list[Job]:
        return [self._take(r) for r in list(gate.members.values()) if not gate.event.is_set()]

    def _take(self, running: _Running) -> Job:
        gate = running.gate
        assert gate is not None
        running.taken_back = True
        gate.members.pop(running.job.execution_id, None)
        if not gate.members:
            self._gates.pop(gate.at_us, None)
        running.gate = None
        self._unregister(running)
        if running.task is not None:
            running.task.cancel()
        return running.job

    async def _gate_loop(self) -> None:
        """Open each instant's gate when the engine's clock reaches it."""
        while True:
            at_us = self.next_gate_us()
            if at_us is None:
                self._gates_changed.clear()
                await self._gates_changed.wait()
                continue
            delay = (at_us - to_micros(self.clock.now())) / 1e6
            if delay > 0:
                self._gates_changed.clear()
                # An earlier instant may be reserved meanwhile: wake up for it too.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, 1.0)):
                        await self._gates_changed.wait()
                continue
            self.release_due(to_micros(self.clock.now()))

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            free = self.max_running - len(self._running)
            batch: list[Job] = []
            while self._queue and len(batch) < free:
                job = heapq.heappop(self._queue)[3]
                self._queued_ids.discard(job.execution_id)
                _discard(self._queued_by_task, job.task.id, job.execution_id)
                self._starting_by_task[job.task.id] += 1
                batch.append(job)
            if batch:
                self.starting = len(batch)
                try:
                    await self._start(batch)
                finally:
                    self.starting = 0
                    self.handover.set()
                    for job in batch:
                        self._starting_by_task[job.task.id] -= 1
                        if self._starting_by_task[job.task.id] <= 0:
                            del self._starting_by_task[job.task.id]
            if not self._running and not self._queue:
                self._idle.set()

    async def _start(self, batch: list[Job]) -> None:
        now = self.clock.now()
        startable: list[tuple[Job, Mapping[str, Any]]] = []
        refused: list[tuple[Job, str]] = []
        for job in batch:
            try:
                params = self.prepare(job)
                if params is None:  # it names secret files: read now, in a thread
                    params = await self.prepare_async(job)
            except Exception as error:  # the stored definition no longer fits the module
                refused.append((job, str(error)))
                continue
            startable.append((job, params))
        try:
            started = await self.store.mark_started_many(
                [(job.execution_id, job.task.id) for job, _ in startable], now, self.dispatcher
            )
        except StoreUnavailableError as error:
            log.warning(
                "could not record executions as started; they wait in the queue",
                reason=error.reason,
                jobs=len(batch),
                retry_sec=self._start_retry_sec,
            )
            for job in batch:
                self.submit(job)
            # Nothing can start before the store takes writes again: the dispatcher waits.
            await self.clock.sleep(self._start_retry_sec)
            self._start_retry_sec = min(self._start_retry_sec * 2, ENDING_RETRY_MAX_SEC)
            self._wake.set()
            return
        except Exception:
            log.exception("could not record executions as started; they stay queued")
            return
        self._start_retry_sec = ENDING_RETRY_FIRST_SEC
        if started is not None:
            # Cluster hook (`taskd.cluster`): a shared store started only the executions
            # this node owns; another node took the others over (or they ended).
            startable = [(job, params) for job, params in startable if job.execution_id in started]
        for job, job_params in startable:
            self.events.started(job, (now - job.due).total_seconds())
            context = ExecutionContext(
                store=self.store,
                clock=self.clock,
                job=job,
                params=job_params,
                stop_grace_sec=self.stop_grace_sec,
                secrets=self.modules.secret_values(job.task.module, job_params),
            )
            running = _Running(job=job, context=context)
            self._running[job.execution_id] = running
            self._running_by_task.setdefault(job.task.id, set()).add(job.execution_id)
            running.task = asyncio.create_task(
                self._execute(running), name=f"taskd-execution-{job.execution_id}"
            )
        await self._end_refused(refused)

    async def _execute(self, running: _Running) -> None:
        job, ctx = running.job, running.context
        forced_at_gate = False
        gated = running.gate is not None
        # Looked up before the gate: after it, each step delays the instant's next start.
        timeout_sec = job.task.timeout_sec
        module: Module | None = None
        unknown: Exception | None = None
        try:
            module = self.modules.get(job.task.module)
        except Exception as error:  # recorded as the run's error below, as before
            unknown = error
        if running.gate is not None:
            try:
                await running.gate.event.wait()  # reserved: the instant opens the gate
            except asyncio.CancelledError:
                if running.taken_back or running.forced_reason is None:
                    raise  # never started: nothing to record (taken back, or torn down)
                forced_at_gate = True  # force-stopped before its instant: record that
        started = self.clock.monotonic()
        status, message = ExecutionStatus.DONE, None
        stopped_by_user = False
        timeout = asyncio.timeout(timeout_sec)
        try:
            if forced_at_gate:
                raise asyncio.CancelledError
            if module is None:
                assert unknown is not None
                raise unknown
            if timeout_sec is None:  # no timer to arm: one step less per start
                result = await module.run(ctx)
            else:
                async with timeout:
                    result = await module.run(ctx)
            if gated:
                # Released with its instant's other runs: let their first steps come before
                # this one's ending (a quick module would otherwise end in its first step).
                await asyncio.sleep(0)
            message = result if isinstance(result, str) else None
            if ctx.stopping:
                status, stopped_by_user = ExecutionStatus.CANCELED, True
                # Say why it stopped first: the module only says how far it got.
                message = _prefixed(running.stop_reason, message)
        except TimeoutError:
            if timeout.expired():
                status, message = ExecutionStatus.ERROR, f"timed out after {timeout_sec} s"
            else:
                status, message = ExecutionStatus.ERROR, "TimeoutError"
        except asyncio.CancelledError:
            if running.forced_reason is None:
                raise  # not ours: the daemon itself is being torn down
            status, message = ExecutionStatus.CANCELED, running.forced_reason
            stopped_by_user = True
        except ModuleError as error:
            status, message = ExecutionStatus.ERROR, str(error) or "module error"
        except Exception as error:
            status, message = (
                ExecutionStatus.ERROR,
                ctx.scrubbed(f"{type(error).__name__}: {error}"),
            )
            # Rendering a traceback costs milliseconds on the loop per failing run: the error
            # is logged at once, its traceback only when debug logging is on.
            bound = log.bind(task_id=job.task.id, execution_id=job.execution_id)
            bound.error("module raised", error=message)
            bound.debug("module raised: traceback", exc_info=True)
        finally:
            if ctx.stopping and status is ExecutionStatus.ERROR and running.stop_reason:
                # Asked to stop, the module ended badly (a command trapping SIGTERM exits 3,
                # say): it was still a stop, not a failure to retry.
                status, stopped_by_user = ExecutionStatus.CANCELED, True
                message = _prefixed(running.stop_reason, message)
            if running.grace_timer is not None:
                running.grace_timer.cancel()
            if message:  # it is logged, stored and shown: no secret of the params in it
                message = ctx.scrubbed(message)
            elapsed = self.clock.monotonic() - started
            # The one event per execution at info level: what ran, why, and how it ended.
            log.info(
                "execution ended",
                task_id=job.task.id,
                task=job.task.name,
                execution_id=job.execution_id,
                module=job.task.module,
                trigger=str(job.trigger.kind),
                status=str(status),
                msg=message,
                seconds=round(elapsed, 6),
            )
            recorded = False
            running.ended = status
            try:
                if message:
                    level = LogLevel.INFO if status is ExecutionStatus.DONE else LogLevel.ERROR
                    ctx.log(level, _prefixed(str(status), message) or message)
                recorded = await self._record_ending(running, message)
            finally:
                self._running.pop(job.execution_id, None)
                _discard(self._running_by_task, job.task.id, job.execution_id)
                running.done = True
                if running.finished is not None:
                    running.finished.set()
                self._wake.set()
            if recorded:
                # Told only now that it no longer counts as running, so the handler may
                # start the task's next run.
                await self._tell(
                    Outcome(
                        job=job, status=status, status_msg=message, stopped_by_user=stopped_by_user
                    )
                )

    async def _record_ending(self, running: _Running, message: str | None) -> bool:
        """Commit how a running execution ended, trying again with backoff while the store
        is unavailable; False (logged) if the store refused it otherwise, or closed."""
        job, status = running.job, running.ended
        assert status is not None
        finished_at = self.clock.now()
        delay = ENDING_RETRY_FIRST_SEC
        while True:
            try:
                await self.store.finish(job.execution_id, job.task.id, status, message, finished_at)
            except StoreUnavailableError as error:
                if running.unrecorded is None:
                    log.warning(
                        "could not record the end of an execution; retrying",
                        execution_id=job.execution_id,
                        status=str(status),
                        reason=error.reason,
                    )
                running.unrecorded = error.reason
            except Exception:
                log.exception(
                    "could not record the end of an execution", execution_id=job.execution_id
                )
                return False
            else:
                if running.unrecorded is not None:
                    log.info(
                        "end of an execution recorded after the store recovered",
                        execution_id=job.execution_id,
                        status=str(status),
                    )
                    running.unrecorded = None
                return True
            await self.clock.sleep(delay)
            delay = min(delay * 2, ENDING_RETRY_MAX_SEC)

    async def _record(self, job: Job, status: ExecutionStatus, message: str | None) -> bool:
        """Commit how an execution ended, once; False (logged) if the store refused."""
        try:
            await self.store.finish(
                job.execution_id, job.task.id, status, message, self.clock.now()
            )
        except Exception:
            log.exception("could not record the end of an execution", execution_id=job.execution_id)
            return False
        return True

    async def _tell(self, outcome: Outcome) -> None:
        await self.events.ended(outcome)

    # -- actions --------------------------------------------------------------------------

    def _get(self, execution_id: int) -> _Running:
        running = self._running.get(execution_id)
        if running is None:
            raise ActionError(f"execution {execution_id} is not running")
        if running.unrecorded is not None:
            raise ActionError(
                f"execution {execution_id} has ended ({running.ended}) and waits for the "
                f"store to record it (store unavailable: {running.unrecorded})"
            )
        return running

    def pause(self, execution_id: int) -> None:
        """Pause a running execution (cooperative: modules block at `checkpoint`)."""
        running = self._get(execution_id)
        if running.context.paused:
            raise ActionError(f"execution {execution_id} is paused already")
        running.context.set_paused(True)
        self.store.set_running_status_nowait(
            execution_id, running.job.task.id, ExecutionStatus.PAUSED
        )

    def resume(self, execution_id: int) -> None:
        """Resume a paused execution."""
        running = self._get(execution_id)
        if not running.context.paused:
            raise ActionError(f"execution {execution_id} is not paused")
        running.context.set_paused(False)
        self.store.set_running_status_nowait(
            execution_id, running.job.task.id, ExecutionStatus.RUNNING
        )

    def stop(self, execution_id: int, reason: str = "stopped") -> None:
        """Ask an execution to stop; cancel it if it has not ended after `stop_grace_sec`."""
        self._request_stop(self._get(execution_id), reason)

    def force_stop(self, execution_id: int, reason: str = "force stopped") -> None:
        """Cancel an execution now (its module kills its processes)."""
        running = self._get(execution_id)
        if running.ended is not None:
            return  # its ending is being recorded: nothing left to cancel
        running.forced_reason = reason
        if running.task is not None:
            running.task.cancel()

    def _request_stop(self, running: _Running, reason: str) -> None:
        if running.context.stopping or running.ended is not None:
            return
        running.stop_reason = reason
        running.context.request_stop()

        async def force_after_grace() -> None:
            await self.clock.sleep(self.stop_grace_sec)  # the injected clock: tests control it
            if running.ended is not None:
                return  # its ending is being recorded: nothing to force (see the docstring)
            running.forced_reason = f"{reason} (forced after {self.stop_grace_sec} s)"
            if running.task is not None:
                running.task.cancel()

        running.grace_timer = asyncio.create_task(
            force_after_grace(), name=f"taskd-stop-grace-{running.job.execution_id}"
        )

    def wait_finished(self, execution_id: int) -> Awaitable[Any]:
        """Return an awaitable that completes when the execution has ended and was recorded."""
        running = self._running.get(execution_id)
        if running is None:
            return asyncio.sleep(0)
        return running.finished_event().wait()


def _prefixed(prefix: str | None, message: str | None) -> str | None:
    """`prefix: message`, without saying the same first word twice ("canceled: canceled")."""
    if not prefix or not message:
        return message or prefix
    if _first_word(message) == _first_word(prefix):
        return message
    return f"{prefix}: {message}"


def _first_word(text: str) -> str:
    return text.split(maxsplit=1)[0].rstrip(":").lower() if text.strip() else ""


def _discard(index: dict[int, set[int]], task_id: int, execution_id: int) -> None:
    ids = index.get(task_id)
    if ids is not None:
        ids.discard(execution_id)
        if not ids:
            del index[task_id]

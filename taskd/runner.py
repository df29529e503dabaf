"""The runner: runs executions as coroutines, at most `max_running` at once.

Jobs wait in a queue ordered by priority (higher first), then due time. Starting a batch of
jobs commits them as `running` in one transaction, then starts their modules: a job is never
started without the store knowing, so a crash can only leave it `running` (and recovery marks
it interrupted), never silently `queued` for a second start.

Every ending is recorded, not raised: a module's exception, a timeout, a stop or a forced stop
each become the execution's final status, written under `asyncio.shield` so that even a
cancelled execution records how it ended.

An ending the store cannot record now (`StoreUnavailableError`: the disk is full, say) is
retried with backoff (`ENDING_RETRY_FIRST_SEC`, doubling up to `ENDING_RETRY_MAX_SEC`)
until it is recorded. Meanwhile the execution keeps its place among the running ones (so
at most `max_running` endings wait, and no more start while they do), its task counts as
busy (overlap `skip` skips, `stop` answers that it ended and waits to be recorded), and
its outcome (retries, notifications) is told only once the ending is recorded, with the
time it ended. Starts the store cannot record are retried the same way, jobs kept queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from taskd.clock import Clock, to_micros
from taskd.context import ExecutionContext
from taskd.errors import ActionError, StoreUnavailableError
from taskd.model import ExecutionStatus, Job, Outcome
from taskd.modules.base import LogLevel, ModuleError
from taskd.modules.params import has_secret_files
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
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # ended and recorded
    ended: ExecutionStatus | None = None  # how the module ended, once it has
    unrecorded: str | None = None  # why the store has not recorded the ending yet


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
        self._start_retry_sec = ENDING_RETRY_FIRST_SEC

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Runner:
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name="taskd-runner")
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
        if self._running and grace_sec > 0 and not self._hurry.is_set():
            waiters = [asyncio.ensure_future(r.finished.wait()) for r in self._running.values()]
            all_done = asyncio.ensure_future(asyncio.wait(waiters))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait([all_done, hurry], timeout=grace_sec, return_when="FIRST_COMPLETED")
            for future in (*waiters, all_done, hurry):
                future.cancel()
        for running in list(self._running.values()):
            self._request_stop(running, "daemon shutting down")
        if self._running:
            await asyncio.wait(
                [asyncio.ensure_future(r.finished.wait()) for r in self._running.values()],
                timeout=self.stop_grace_sec + 5,
            )
        for running in self._running.values():
            if running.unrecorded is not None:
                log.error(
                    "taskd stops with an ending the store did not record: the execution "
                    "stays running in the store and is marked interrupted at the next start",
                    execution_id=running.job.execution_id,
                    status=str(running.ended),
                    reason=running.unrecorded,
                )
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    # -- queries --------------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        """How many executions run now."""
        return len(self._running)

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

    def prepare(self, job: Job) -> Mapping[str, Any]:
        """Validate the job's params against its module now (cached per task version).

        The scheduler calls it when it claims a slot ahead of time, so that at the due
        instant nothing but the start itself is left. Raises ValidationError.
        """
        key = (job.task.id, job.task.version)
        params = self._params.get(key)
        if params is None:
            params = self.modules.validate(
                job.task.module, job.task.task_params, path="task_params"
            )
            if has_secret_files(self.modules.get(job.task.module).params, job.task.task_params):
                return params  # read again for each run: the file may have been rotated
            if len(self._params) >= 10_000:
                self._params.clear()
            self._params[key] = params
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
            )
            running = _Running(job=job, context=context)
            self._running[job.execution_id] = running
            self._running_by_task.setdefault(job.task.id, set()).add(job.execution_id)
            running.task = asyncio.create_task(
                self._execute(running), name=f"taskd-execution-{job.execution_id}"
            )
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

    async def _execute(self, running: _Running) -> None:
        job, ctx = running.job, running.context
        bound = log.bind(task_id=job.task.id, task=job.task.name, execution_id=job.execution_id)
        timeout_sec = job.task.timeout_sec
        started = self.clock.monotonic()
        status, message = ExecutionStatus.DONE, None
        stopped_by_user = False
        bound.debug("execution started", module=job.task.module, trigger=job.trigger.kind)
        timeout = asyncio.timeout(timeout_sec)
        try:
            module = self.modules.get(job.task.module)
            async with timeout:
                result = await module.run(ctx)
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
            status, message = ExecutionStatus.ERROR, f"{type(error).__name__}: {error}"
            # Rendering a traceback costs milliseconds on the loop per failing run: the error
            # is logged at once, its traceback only when debug logging is on.
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
            elapsed = self.clock.monotonic() - started
            # The one event per execution at info level: what ran, why, and how it ended.
            bound.info(
                "execution ended",
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
                recorded = await asyncio.shield(self._record_ending(running, message))
            finally:
                self._running.pop(job.execution_id, None)
                _discard(self._running_by_task, job.task.id, job.execution_id)
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
        return running.finished.wait()


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

"""The scheduler: a heap of due times, slots claimed ahead, jobs handed to the runner.

It never scans all tasks: the heap holds (due time, task id) and the loop sleeps until the
earliest entry minus a short look-ahead, a wake-up (a task changed), or one second at most
(so a jump of the wall clock is noticed within a second).

A slot fires at most once: its execution row and the task's next `next_run_at` are
committed together (`Store.claim`) before anything starts, and rows are unique per
(task, slot). Entries in the heap may be stale (the task was edited since): a claim names
the `next_run_at` it expects and is void if the task moved on.

Commit ahead, release at the instant: slots are claimed ahead of their instant, by a
look-ahead that grows with the number of tasks due together (`_lookahead_us`: the base
`lookahead_sec` plus the measured claim cost per job times the count, at most
`MAX_LOOKAHEAD_SEC`), in chunks of `CLAIM_CHUNK` tasks so the first ones are ready early.
The claimed jobs the runner will certainly start at their instant (overlap allows it, a
place is free) are reserved there at once (`Runner.reserve`: the start committed with the
instant as `started_at`, the coroutine created and waiting); the others wait here and are
handed over at their instant, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from taskd.clock import Clock, to_micros
from taskd.errors import StoreUnavailableError, ValidationError
from taskd.model import (
    CatchUp,
    Execution,
    ExecutionStatus,
    Job,
    Outcome,
    Overlap,
    Task,
    Trigger,
    TriggerKind,
)
from taskd.planning import Plan, SchedulerSettings, plan_due_slots
from taskd.processes import end_group
from taskd.runner import Runner
from taskd.schedule import ScheduleSet, format_utc
from taskd.store import NewExecution, Store

__all__ = ["Scheduler", "SchedulerSettings"]

log = structlog.get_logger("taskd.scheduler")

MAX_WAKE_INTERVAL_SEC = 1.0
# While the store is unavailable, ticks (and the records of skipped slots) are tried again
# after this delay, doubling up to the maximum: due slots wait, none is lost.
STORE_RETRY_FIRST_SEC = 0.1
STORE_RETRY_MAX_SEC = 2.0
MAX_RETRY_WAIT_SEC = 7 * 86_400.0
# Look-ahead: never more than this, whatever is due; tasks claimed per store round trip;
# tasks due within this window of the earliest one count as "due together"; the claim cost
# per job assumed before one was measured, and the margin on the measured one.
MAX_LOOKAHEAD_SEC = 5.0
CLAIM_CHUNK = 1000
TOGETHER_WINDOW_US = 1_000_000
FIRST_COST_PER_JOB_SEC = 200e-6
COST_MARGIN = 2.0
_COUNT_LIMIT = 100_000


class Scheduler:
    """Turns due times into executions: `async with Scheduler(...)` runs its loop."""

    def __init__(
        self,
        *,
        store: Store,
        runner: Runner,
        clock: Clock,
        settings: SchedulerSettings | None = None,
        default_timezone: str = "UTC",
    ) -> None:
        self.store = store
        self.runner = runner
        self.clock = clock
        self.settings = settings or SchedulerSettings()
        self._heap: list[tuple[int, int]] = []
        # Claimed jobs waiting for their instant: (due µs, sequence, job, overlap mode).
        self._waiting: list[tuple[int, int, Job, Overlap]] = []
        self._waiting_by_task: Counter[int] = Counter()
        self._sequence = itertools.count()
        # Runs held back until the task's running execution ends, oldest first: the one
        # kept by overlap = "queue" or "replace", and catch-up runs (catch_up = "all").
        self._parked: dict[int, deque[Job]] = {}
        self._schedules: dict[tuple[int, int], ScheduleSet] = {}
        # Where schedules without their own `timezone` are read; a reload may change it.
        self.default_timezone = default_timezone
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        # Wall seconds a claim took per job (moving average): sizes the look-ahead.
        self._cost_per_job_sec = FIRST_COST_PER_JOB_SEC
        self._claiming_us: int | None = None  # the earliest due time of the claim under way

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a previous process, load the due index and start the loop.

        Recovery first ends what is left of the process groups of runs the previous process
        left running (see `taskd.processes`), then marks those runs interrupted and applies
        the retry policy: a command never runs twice at once.
        """
        await self._end_surviving_groups()
        now = self.clock.now()
        interrupted = await self.store.recover_interrupted(now)
        tasks = await self.store.get_tasks(sorted({e.task_id for e in interrupted}))
        for execution in interrupted:
            log.warning(
                "execution was interrupted by a crash",
                task_id=execution.task_id,
                execution_id=execution.id,
            )
            task = tasks.get(execution.task_id)
            if task is not None:
                await self._maybe_retry(task, execution.attempt, now)
        await self._requeue(await self.store.queued_executions(), now)
        self._heap = await self.store.due_index()
        heapq.heapify(self._heap)
        log.info("scheduler started", scheduled_tasks=len(self._heap))
        self._loop_task = asyncio.create_task(self._run(), name="taskd-scheduler")

    async def _end_surviving_groups(self) -> None:
        groups = await self.store.interrupted_process_groups()

        async def end(execution_id: int, task_id: int, pgid: int, start: str) -> None:
            grace = self.runner.stop_grace_sec
            outcome = await asyncio.to_thread(end_group, pgid, start, grace)
            log.warning(
                "process group of an interrupted execution",
                task_id=task_id,
                execution_id=execution_id,
                pgid=pgid,
                outcome=outcome,
            )
            self.store.log_nowait(
                task_id,
                execution_id,
                "warning",
                f"taskd restarted: process group {pgid}: {outcome}",
                self.clock.now(),
            )

        await asyncio.gather(*(end(*group) for group in groups))

    async def stop(self) -> None:
        """Stop the loop. Claimed jobs not yet started stay `queued` in the store."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def alive(self) -> bool:
        """Whether the scheduling loop runs."""
        return self._loop_task is not None and not self._loop_task.done()

    def task_changed(self, task_id: int, task: Task | None) -> None:
        """Tell the scheduler a task was created, edited or (`task` None) deleted.

        Its new due time joins the heap. Runs claimed but not started yet take up the new
        definition; if the task was disabled or deleted they do not start (a disabled
        task's become `skipped` rows, "task disabled").
        """
        if task is not None and task.enabled and task.next_run_at is not None:
            heapq.heappush(self._heap, (to_micros(task.next_run_at), task_id))
        pending = (
            [entry for entry in self._waiting if entry[2].task.id == task_id]
            if self._waiting_by_task[task_id]
            else []
        )
        # Reserved in the runner, their instant not reached: they wait here again.
        pending = [
            (to_micros(job.due), next(self._sequence), job, self._overlap_of(job))
            for job in self.runner.take_back(task_id)
        ] + pending
        parked = list(self._parked.pop(task_id, ()))
        queued = self.runner.remove_queued(task_id)
        if self._waiting_by_task[task_id]:
            self._waiting = [entry for entry in self._waiting if entry[2].task.id != task_id]
            heapq.heapify(self._waiting)
            del self._waiting_by_task[task_id]
        for due_us, sequence, job, overlap in pending:
            if task is not None and task.enabled:
                job = replace(job, task=task)
                self._wait((due_us, sequence, job, overlap))
            elif task is not None:
                self._skip(job, "task disabled")
        if task is not None and task.enabled:
            if parked:  # still waiting for the running one to end
                self._parked[task_id] = deque(replace(job, task=task) for job in parked)
            for job in queued:
                self.runner.submit(replace(job, task=task))
        elif task is not None:
            for job in (*parked, *queued):
                self._skip(job, "task disabled")
        self._wake.set()
        self.runner.handover.set()  # a due time may have come closer

    @staticmethod
    def _overlap_of(job: Job) -> Overlap:
        """The overlap policy a job's start follows: its task's for slots, else parallel."""
        if job.trigger.kind in _SLOT_TRIGGERS:
            return job.task.options.overlap
        return Overlap.PARALLEL

    def set_default_timezone(self, zone: str) -> None:
        """Read schedules without their own zone in `zone` from now on.

        Stored due times are not moved here: `Core.set_default_timezone` recomputes them.
        """
        if zone != self.default_timezone:
            self.default_timezone = zone
            self._schedules.clear()

    def _wait(self, entry: tuple[int, int, Job, Overlap]) -> None:
        heapq.heappush(self._waiting, entry)
        self._waiting_by_task[entry[2].task.id] += 1

    def pending_for_task(self, task_id: int) -> int:
        """How many of the task's runs wait here for their time or for a running one."""
        return self._waiting_by_task[task_id] + len(self._parked.get(task_id, ()))

    # -- cluster hooks (`taskd.cluster`; PostgreSQL store only) ---------------------------

    async def adopt(self, interrupted: Sequence[Execution], queued: Sequence[Execution]) -> None:
        """Take over the work of a node that died or stopped: apply the retry policy of its
        runs that were interrupted (already marked so in the store), and take up its queued
        runs (already this node's in the store), as a restart does with its own."""
        now = self.clock.now()
        tasks = await self.store.get_tasks(sorted({e.task_id for e in interrupted}))
        for execution in interrupted:
            task = tasks.get(execution.task_id)
            if task is not None:
                await self._maybe_retry(task, execution.attempt, now)
        await self._requeue(queued, now)

    async def resync(self) -> None:
        """Re-read every due time into the heap, after news of other nodes' edits may have
        been missed; entries made stale meanwhile are skipped when they come up."""
        for entry in await self.store.due_index():
            heapq.heappush(self._heap, entry)
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            try:
                await self.tick(self.clock.now())
                backoff = 0.0
            except StoreUnavailableError as error:
                if not backoff:
                    log.warning("scheduler waits for the store", reason=error.reason)
                backoff = min(max(backoff * 2, STORE_RETRY_FIRST_SEC), STORE_RETRY_MAX_SEC)
            except Exception:
                log.exception("scheduler tick failed; retrying")
            delay = max(backoff, self._seconds_to_next(self.clock.now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def next_due_us(self) -> int | None:
        """The earliest instant (µs since the epoch) the scheduler will claim or start
        something at, or None: for the API, which steps aside around it (engine first)."""
        candidates = []
        if self._heap:
            candidates.append(self._heap[0][0])
        if self._waiting:
            candidates.append(self._waiting[0][0])
        gate = self.runner.next_gate_us()
        if gate is not None:
            candidates.append(gate)
        return min(candidates) if candidates else None

    def claim_pending(self, due_us: int) -> bool:
        """Whether slots due at `due_us` or before are still to be claimed (or being
        claimed now): for the API's engine-first window."""
        if self._claiming_us is not None and self._claiming_us <= due_us:
            return True
        return bool(self._heap) and self._heap[0][0] <= due_us

    def lookahead_sec(self) -> float:
        """How long before the next due instant its slots are claimed (see the module
        docstring); for the API's engine-first window too."""
        return self._lookahead_us() / 1e6

    def _lookahead_us(self) -> int:
        base = int(self.settings.lookahead_sec * 1e6)
        if not self._heap:
            return base
        together = _count_up_to(self._heap, self._heap[0][0] + TOGETHER_WINDOW_US)
        extra = together * self._cost_per_job_sec * COST_MARGIN
        return base + int(min(extra, MAX_LOOKAHEAD_SEC) * 1e6)

    def _seconds_to_next(self, now: datetime) -> float:
        now_us = to_micros(now)
        candidates = [MAX_WAKE_INTERVAL_SEC]
        if self._heap:
            lead = self._heap[0][0] - now_us - self._lookahead_us()
            candidates.append(lead / 1e6)
        if self._waiting:
            candidates.append((self._waiting[0][0] - now_us) / 1e6)
        return max(0.0, min(candidates))

    async def tick(self, now: datetime) -> None:
        """Claim every slot due up to `now` + look-ahead, in chunks (reserving in the
        runner what will certainly start); start every job due by `now`."""
        now_us = to_micros(now)
        horizon = now_us + self._lookahead_us()
        while self._heap and self._heap[0][0] <= horizon:
            due: dict[int, set[int]] = {}
            while self._heap and self._heap[0][0] <= horizon and len(due) < CLAIM_CHUNK:
                due_us, task_id = heapq.heappop(self._heap)
                due.setdefault(task_id, set()).add(due_us)
            began = time.perf_counter()
            self._claiming_us = min(min(times) for times in due.values())
            try:
                jobs = await self._claim(due, now)
            except BaseException:
                # Nothing was claimed: put the due times back for the next tick.
                for task_id, times in due.items():
                    for due_us in times:
                        heapq.heappush(self._heap, (due_us, task_id))
                raise
            finally:
                self._claiming_us = None
                self.runner.handover.set()
            if jobs:
                cost = (time.perf_counter() - began) / jobs
                self._cost_per_job_sec = 0.5 * self._cost_per_job_sec + 0.5 * cost
        self.runner.release_due(now_us)
        while self._waiting and self._waiting[0][0] <= now_us:
            _, _, job, overlap = heapq.heappop(self._waiting)
            self._waiting_by_task[job.task.id] -= 1
            if not self._waiting_by_task[job.task.id]:
                del self._waiting_by_task[job.task.id]
            self._start(job, overlap)

    # -- claiming slots -------------------------------------------------------------------

    async def _claim(self, due: dict[int, set[int]], now: datetime) -> int:
        """Claim the due slots of these tasks; return how many jobs came of it."""
        tasks = await self.store.get_tasks(list(due))
        plans: list[Plan] = []
        for task_id, due_times in due.items():
            task = tasks.get(task_id)
            if task is None or not task.enabled or task.next_run_at is None:
                continue
            if to_micros(task.next_run_at) not in due_times:
                continue  # stale heap entries: the task's current one is still in the heap
            try:
                try:
                    schedules = self._schedules_of(task)
                except ValidationError:
                    schedules = ScheduleSet()
                plans.append(plan_due_slots(task, schedules, now, self.settings))
            except Exception:
                log.exception(
                    "could not plan a task's slot; it is disabled until edited", task_id=task.id
                )
                await self.store.set_next_run_at(task.id, None)
        if not plans:
            return 0
        results = await self.store.claim([p.claim for p in plans], now)
        ahead: dict[int, list[Job]] = {}  # jobs to reserve in the runner, by instant
        busy: set[int] = set()  # tasks with a job reserved in this claim
        count = 0
        for plan, result in zip(plans, results, strict=True):
            if not result.applied:
                # Edited meanwhile: look the task up again and queue its current due time.
                entry = await self.store.due_entry(plan.task.id)
                if entry is not None:
                    heapq.heappush(self._heap, entry)
                continue
            if plan.claim.next_run_at is not None:
                heapq.heappush(self._heap, (to_micros(plan.claim.next_run_at), plan.task.id))
            for index, trigger, at, overlap in plan.starts:
                execution_id = result.execution_ids[index]
                if execution_id is None:
                    continue  # this slot was accounted for before (a restart, say)
                job = Job(execution_id=execution_id, task=plan.task, trigger=trigger, due=at)
                count += 1
                if self._starts_for_sure(job, overlap, busy):
                    ahead.setdefault(to_micros(at), []).append(job)
                    busy.add(job.task.id)
                    continue
                with contextlib.suppress(Exception):  # a refusal is recorded when it starts
                    self.runner.prepare(job)
                self._wait((to_micros(at), next(self._sequence), job, overlap))
        for at_us in sorted(ahead):
            jobs = ahead[at_us]
            if len(jobs) <= self.runner.free_places():
                jobs = await self.runner.reserve(jobs, at_us)
            for job in jobs:  # no place for all of them now: handed over at the instant
                with contextlib.suppress(Exception):
                    self.runner.prepare(job)
                self._wait((at_us, next(self._sequence), job, self._overlap_of(job)))
        self._wake.set()
        return count

    def _starts_for_sure(self, job: Job, overlap: Overlap, busy: set[int]) -> bool:
        """Whether `_start` would hand this job to the runner at its instant whatever
        happens meanwhile: nothing of its task waits here before it, and its overlap
        policy lets it start beside what may run then (parallel), or nothing of its task
        runs, is queued or reserved now (then nothing else starts it before the instant:
        other runs of the task would wait behind this one)."""
        task_id = job.task.id
        if task_id in self._waiting_by_task or task_id in self._parked:
            return False
        if overlap is Overlap.PARALLEL or job.trigger.kind not in _SLOT_TRIGGERS:
            return True
        return task_id not in busy and not self.runner.busy_with_task(task_id)

    def _schedules_of(self, task: Task) -> ScheduleSet:
        key = (task.id, task.version)
        schedules = self._schedules.get(key)
        if schedules is None:
            if len(self._schedules) > 100_000:
                self._schedules.clear()
            schedules = task.schedule_set(self.default_timezone)
            self._schedules[key] = schedules
        return schedules

    # -- starting, overlap, retries -------------------------------------------------------

    def _start(self, job: Job, overlap: Overlap) -> None:
        """Hand a due job to the runner, applying the task's overlap policy."""
        task_id = job.task.id
        if (
            overlap is Overlap.PARALLEL
            or job.trigger.kind not in _SLOT_TRIGGERS
            or not (self.runner.busy_with_task(task_id))
        ):
            self.runner.submit(job)
            return
        parked = self._parked.setdefault(task_id, deque())
        if job.trigger.kind is TriggerKind.CATCH_UP:
            parked.append(job)  # missed slots run one after another, oldest first
            return
        if overlap is Overlap.QUEUE:
            if any(p.trigger.kind is TriggerKind.SCHEDULE for p in parked):
                self._skip(job, "a run is queued already (overlap=queue)")
            else:
                parked.append(job)
            return
        if overlap is Overlap.REPLACE:
            for execution_id in self.runner.running_for_task(task_id):
                self.runner.stop(execution_id, "replaced by a newer run (overlap=replace)")
            for stale in [p for p in parked if p.trigger.kind is TriggerKind.SCHEDULE]:
                parked.remove(stale)
                self._skip(stale, "replaced by a newer run (overlap=replace)")
            parked.append(job)
            return
        self._skip(job, "the previous run is still running (overlap=skip)")

    def _skip(self, job: Job, reason: str) -> None:
        log.info("slot skipped", task_id=job.task.id, execution_id=job.execution_id, reason=reason)

        async def record() -> None:
            at, delay = self.clock.now(), STORE_RETRY_FIRST_SEC
            while True:
                try:
                    await self.store.finish(
                        job.execution_id, job.task.id, ExecutionStatus.SKIPPED, reason, at
                    )
                    return
                except StoreUnavailableError:
                    await self.clock.sleep(delay)  # kept until recorded, as endings are
                    delay = min(delay * 2, STORE_RETRY_MAX_SEC)

        _spawn(record())

    async def on_outcome(self, outcome: Outcome) -> None:
        """Take up what an ending allows: the task's parked run, a retry of a failure.

        Subscribed to the runner's `RunEvents.on_ended` where the engine is built.
        """
        task_id = outcome.job.task.id
        parked = self._parked.get(task_id)
        if parked and not self.runner.running_for_task(task_id):
            self.runner.submit(parked.popleft())
            if not parked:
                del self._parked[task_id]
        if outcome.status is ExecutionStatus.ERROR and not outcome.stopped_by_user:
            delay = STORE_RETRY_FIRST_SEC
            while True:  # the ending is recorded: its retry must not be lost to the store
                try:
                    task = (await self.store.get_tasks([task_id])).get(task_id)
                    if task is not None:
                        await self._maybe_retry(task, outcome.job.trigger.attempt, self.clock.now())
                    return
                except StoreUnavailableError:
                    await self.clock.sleep(delay)
                    delay = min(delay * 2, STORE_RETRY_MAX_SEC)

    async def _maybe_retry(self, task: Task, attempt: int, now: datetime) -> None:
        """Queue a retry of a failed execution if the task's policy allows another."""
        options = task.options
        if attempt >= options.max_retries:
            return
        # Doubling, but never past a week: a long retry chain must not overflow the clock.
        delay = min(options.retry_delay_sec * 2.0 ** min(attempt, 64), MAX_RETRY_WAIT_SEC)
        due = now + timedelta(seconds=delay)
        [execution_id] = await self.store.add_executions(
            [
                NewExecution(
                    task_id=task.id,
                    trigger=TriggerKind.RETRY,
                    scheduled_for=due,
                    attempt=attempt + 1,
                )
            ],
            now,
        )
        assert execution_id is not None
        log.info("retry queued", task_id=task.id, attempt=attempt + 1, due=format_utc(due))
        trigger = Trigger(
            kind=TriggerKind.RETRY, scheduled_for=format_utc(due), attempt=attempt + 1
        )
        self.enqueue(Job(execution_id=execution_id, task=task, trigger=trigger, due=due))

    def enqueue(self, job: Job, overlap: Overlap = Overlap.PARALLEL) -> None:
        """Start `job` (already committed as `queued`) at its due time."""
        due_us = to_micros(job.due)
        if (
            self.alive
            and due_us <= to_micros(self.clock.now())
            and job.task.id not in self._waiting_by_task
        ):
            # Due now and nothing of its task waits before it: what the loop's next turn
            # would do, without that turn (a tick driven by hand keeps the old order).
            self._start(job, overlap)
            return
        self._wait((due_us, next(self._sequence), job, overlap))
        self._wake.set()

    async def _requeue(self, queued: Sequence[Execution], now: datetime) -> None:
        """Take up executions a previous process left `queued`.

        Rows of schedule slots whose time passed go through the task's catch-up policy;
        retries, manual and deferred runs start at their time (or now).
        """
        if not queued:
            return
        tasks = await self.store.get_tasks(sorted({e.task_id for e in queued}))
        missed_before = now - timedelta(seconds=self.settings.misfire_grace_sec)
        by_task: dict[int, list[Execution]] = {}
        for execution in queued:
            by_task.setdefault(execution.task_id, []).append(execution)
        for task_id, executions in by_task.items():
            task = tasks[task_id]
            catch_up, overlap = task.options.catch_up, task.options.overlap
            missed = [e for e in executions if e.slot_at is not None and e.slot_at < missed_before]
            keep = [e for e in executions if e not in missed]
            if catch_up is CatchUp.ALL:
                keep = executions
            elif catch_up is CatchUp.ONCE and missed:
                next_missed = task.next_run_at is not None and task.next_run_at < missed_before
                if not next_missed:
                    # Otherwise the task's own past due time makes the one catch-up run.
                    keep.append(missed[-1])
            for execution in missed:
                if execution not in keep:
                    reason = (
                        "missed; coalesced into one catch-up run (catch_up=once)"
                        if catch_up is CatchUp.ONCE
                        else f"missed while taskd was not running (catch_up={catch_up})"
                    )
                    await self.store.finish(
                        execution.id, task_id, ExecutionStatus.SKIPPED, reason, now
                    )
            for execution in sorted(keep, key=lambda e: e.id):
                due = execution.scheduled_for or now
                trigger = Trigger(
                    kind=execution.trigger,
                    metadata=execution.trigger_metadata,
                    scheduled_for=format_utc(due),
                    attempt=execution.attempt,
                )
                job = Job(execution_id=execution.id, task=task, trigger=trigger, due=due)
                self.enqueue(job, overlap if execution.slot_at is not None else Overlap.PARALLEL)


_SLOT_TRIGGERS = frozenset({TriggerKind.SCHEDULE, TriggerKind.CATCH_UP})


def _count_up_to(heap: list[tuple[int, int]], limit_us: int) -> int:
    """How many heap entries are due at `limit_us` or before (they form a subtree at the
    root: O(that count), bounded by `_COUNT_LIMIT`)."""
    count, stack, size = 0, [0], len(heap)
    while stack and count < _COUNT_LIMIT:
        index = stack.pop()
        if index < size and heap[index][0] <= limit_us:
            count += 1
            stack.append(2 * index + 1)
            stack.append(2 * index + 2)
    return count


_background: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    """Run a fire-and-forget coroutine, keeping a strong reference until it ends."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)

"""Slot planning: what a task's due slots become, decided without I/O.

The scheduler hands `plan_due_slots` a task whose stored due time has come; the plan is the
store claim (rows to insert, the next due time) and which rows start, with their overlap
policy. Catch-up (`once`, `all`, `skip`) and the bound on recorded missed slots live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from taskd.model import CatchUp, ExecutionStatus, Overlap, Task, Trigger, TriggerKind
from taskd.schedule import ScheduleSet, format_utc
from taskd.store import NewExecution, SlotClaim

log = structlog.get_logger("taskd.scheduler")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    """Knobs of the scheduler; the defaults suit a server."""

    lookahead_sec: float = 0.1
    # A slot more than this late counts as missed and goes through the catch-up policy.
    misfire_grace_sec: float = 60.0
    # At most this many missed slots of one task are run (`all`) or recorded as skipped.
    catch_up_limit: int = 100


@dataclass(slots=True)
class Plan:
    """One task's claim and, for each row in it, whether it starts and how."""

    task: Task
    claim: SlotClaim
    starts: list[tuple[int, Trigger, datetime, Overlap]]  # (row index, trigger, due, overlap)


def plan_due_slots(
    task: Task, schedules: ScheduleSet, now: datetime, settings: SchedulerSettings
) -> Plan:
    """Decide what the task's due slot(s) become: runs, skipped rows, next due time.

    Pure: `schedules` are the task's, read in the zone the caller chose; nothing is written.
    Slots from the stored due time up to `now` + look-ahead are accounted for, oldest first;
    those older than the misfire grace go through the task's catch-up policy.
    """
    assert task.next_run_at is not None
    overlap, catch_up = task.options.overlap, task.options.catch_up
    limit = settings.catch_up_limit
    horizon = now + timedelta(seconds=settings.lookahead_sec)
    missed_before = now - timedelta(seconds=settings.misfire_grace_sec)

    # Every slot from the stored due time up to the horizon, oldest first (bounded).
    slots = [task.next_run_at]
    uncounted = 0
    following = schedules.next_after(task.next_run_at) if schedules else None
    while following is not None and following <= horizon:
        if len(slots) < limit:
            slots.append(following)
        else:
            uncounted += 1
            if uncounted > 100_000:  # a years-long outage of a minutely task: jump
                following = schedules.next_after(horizon)
                break
        following = schedules.next_after(following)
    next_run_at = following

    missed = [slot for slot in slots if slot < missed_before]
    on_time = [slot for slot in slots if slot >= missed_before]
    rows: list[NewExecution] = []
    starts: list[tuple[int, Trigger, datetime, Overlap]] = []

    def add_run(slot: datetime, kind: TriggerKind) -> None:
        starts.append(
            (len(rows), Trigger(kind=kind, scheduled_for=format_utc(slot)), slot, overlap)
        )
        rows.append(NewExecution(task_id=task.id, trigger=kind, slot_at=slot, scheduled_for=slot))

    def add_skipped(slot: datetime, reason: str) -> None:
        rows.append(
            NewExecution(
                task_id=task.id,
                trigger=TriggerKind.SCHEDULE,
                status=ExecutionStatus.SKIPPED,
                status_msg=reason,
                slot_at=slot,
                scheduled_for=slot,
            )
        )

    if missed:
        if catch_up is CatchUp.ALL:
            for slot in missed:
                add_run(slot, TriggerKind.CATCH_UP)
        elif catch_up is CatchUp.ONCE and not on_time:
            for slot in missed[:-1]:
                add_skipped(slot, "missed; coalesced into one catch-up run (catch_up=once)")
            add_run(missed[-1], TriggerKind.CATCH_UP)
        else:
            reason = (
                "missed; an on-time run follows (catch_up=once)"
                if catch_up is CatchUp.ONCE
                else "missed while taskd was not running (catch_up=skip)"
            )
            for slot in missed:
                add_skipped(slot, reason)
    for slot in on_time:
        add_run(slot, TriggerKind.SCHEDULE)
    if uncounted:
        log.warning(
            "more missed slots than recorded",
            task_id=task.id,
            recorded=len(slots),
            unrecorded=uncounted,
        )
    claim = SlotClaim(
        task_id=task.id,
        expected_next_run_at=task.next_run_at,
        next_run_at=next_run_at,
        executions=tuple(rows),
    )
    return Plan(task=task, claim=claim, starts=starts)

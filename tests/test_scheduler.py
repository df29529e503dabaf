"""The scheduler with a real store, runner and modules, driven by a fake clock.

Each test sets the wall clock and calls `Scheduler.tick(now)` itself (through
`Engine.tick`), so what is due is decided by the test, never by real time; the real loop
(`Scheduler.start()`) runs only where the loop itself is the subject. The `gate` module
blocks until the test releases it, so "running" is a state the test holds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from engine_fixtures import (
    EVERY_15_MIN,
    QUARTER,
    T0,
    WAIT_SEC,
    Engine,
    FakeClock,
    at,
    open_engine,
    settle,
    until,
)

from taskd.clock import SystemClock
from taskd.model import Execution, ExecutionStatus, TaskStatus, TriggerKind
from taskd.runner import Runner
from taskd.schedule import format_utc
from taskd.scheduler import Scheduler, SchedulerSettings
from taskd.store import NewExecution

SKIPPED = ExecutionStatus.SKIPPED
DONE = ExecutionStatus.DONE


def statuses(rows: Sequence[Execution]) -> list[str]:
    """The status of each row, as plain strings."""
    return [str(row.status) for row in rows]


# -- firing a slot -------------------------------------------------------------------------


async def test_due_slot_fires_once_at_its_instant(eng: Engine) -> None:
    """A due slot starts once at its instant; repeated ticks never fire it again."""
    task = await eng.create(schedules=EVERY_15_MIN)
    assert task.next_run_at == T0

    await eng.tick(at(0))
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.trigger.kind == "schedule"
    assert call.ctx.trigger.scheduled_for == "2026-01-05T10:00:00Z"
    [row] = await eng.executions(task.id)
    assert (row.trigger, row.slot_at, row.scheduled_for, row.attempt) == (
        TriggerKind.SCHEDULE,
        T0,
        T0,
        0,
    )
    assert row.status is ExecutionStatus.RUNNING
    assert row.started_at == T0
    assert row.dispatcher == "test-host"
    stored = await eng.task(task.id)
    assert stored.next_run_at == T0 + QUARTER
    assert stored.status is TaskStatus.RUNNING
    assert stored.last_execution_id == row.id

    for second in (0, 0.05, 1, 30):
        await eng.tick(at(second))
    call.release.set()
    await eng.drain()
    [row] = await eng.executions(task.id)
    assert row.status is DONE
    assert len(eng.gate.calls) == 1


async def test_lookahead_claims_the_slot_early_and_starts_it_at_the_instant(
    eng: Engine,
) -> None:
    """Within the look-ahead the row is claimed with the next due time and its start
    committed ahead (`running`, `started_at` = the instant); the module starts only at the
    instant."""
    task = await eng.create(schedules=EVERY_15_MIN)

    await eng.tick(at(-0.2))  # outside the 0.1 s look-ahead: nothing happens
    assert await eng.executions(task.id) == []
    assert (await eng.task(task.id)).next_run_at == T0

    await eng.tick(at(-0.05))
    [row] = await eng.executions(task.id)
    assert (row.status, row.trigger, row.slot_at) == (ExecutionStatus.RUNNING, "schedule", T0)
    assert row.queued_at == at(-0.05)
    assert row.started_at == T0  # committed ahead, for the instant
    stored = await eng.task(task.id)
    assert stored.next_run_at == T0 + QUARTER  # committed together with the row
    assert stored.status is TaskStatus.RUNNING

    await eng.tick(at(-0.01))
    assert eng.gate.calls == []
    assert (eng.runner.running_count, eng.runner.reserved_count) == (0, 1)  # place taken

    await eng.tick(at(0))
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.execution_id == row.id
    [row] = await eng.executions(task.id)
    assert row.status is ExecutionStatus.RUNNING
    assert row.started_at == T0


async def test_two_schedulers_sharing_a_store_fire_a_slot_once(eng: Engine) -> None:
    """Two schedulers tick the same due slot at once: one claim wins, the other finds the
    slot taken (its claim void or its heap entry stale)."""
    task = await eng.create(schedules=EVERY_15_MIN)
    other_runner = Runner(
        store=eng.store,
        modules=eng.runner.modules,
        clock=eng.clock,
        max_running=4,
        stop_grace_sec=0.2,
        dispatcher="other-host",
    )
    async with other_runner:
        other = Scheduler(store=eng.store, runner=other_runner, clock=eng.clock)
        other.task_changed(task.id, task)
        eng.clock.set(at(0))
        await asyncio.gather(eng.scheduler.tick(at(0)), other.tick(at(0)))
        await asyncio.gather(eng.scheduler.tick(at(0)), other.tick(at(0)))
        [call] = await eng.gate.wait_calls(1)
        await settle(eng.store)
        [row] = await eng.executions(task.id)
        assert row.slot_at == T0
        assert eng.runner.running_count + other_runner.running_count == 1
        call.release.set()
        await eng.drain()
        async with asyncio.timeout(WAIT_SEC):
            await other_runner.drain()
    assert len(eng.gate.calls) == 1
    assert (await eng.task(task.id)).next_run_at == T0 + QUARTER


async def test_a_slot_already_accounted_for_is_not_fired_again(eng: Engine) -> None:
    """If a task's due time is set back to a slot that has a row, the claim inserts nothing."""
    task = await eng.create(schedules=EVERY_15_MIN, params={"auto": True})
    await eng.tick(at(0))
    await eng.gate.wait_calls(1)
    await eng.drain()

    await eng.store.set_next_run_at(task.id, T0)  # as a second process with a stale view might
    eng.scheduler.task_changed(task.id, task)
    await eng.tick(at(1))
    await eng.drain()

    [row] = await eng.executions(task.id)
    assert row.status is DONE
    assert len(eng.gate.calls) == 1
    assert (await eng.task(task.id)).next_run_at == T0 + QUARTER


# -- overlap ------------------------------------------------------------------------------


async def test_overlap_skip_records_the_skipped_slot(eng: Engine) -> None:
    """overlap=skip: a slot that comes while the task runs becomes a `skipped` row."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "skip"})
    await eng.tick(at(0))
    [first] = await eng.gate.wait_calls(1)

    await eng.tick(T0 + QUARTER)
    running, skipped = await eng.executions(task.id)
    assert running.status is ExecutionStatus.RUNNING
    assert (skipped.status, skipped.slot_at, skipped.trigger) == (
        SKIPPED,
        T0 + QUARTER,
        TriggerKind.SCHEDULE,
    )
    assert skipped.status_msg == "the previous run is still running (overlap=skip)"
    assert skipped.started_at is None
    assert (await eng.task(task.id)).status is TaskStatus.RUNNING

    first.release.set()
    await eng.drain()
    assert len(eng.gate.calls) == 1
    assert statuses(await eng.executions(task.id)) == ["done", "skipped"]


async def test_overlap_queue_keeps_one_pending_run_and_skips_further_slots(
    eng: Engine,
) -> None:
    """overlap=queue: one later slot waits (queued), a further one is skipped."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "queue"})
    await eng.tick(at(0))
    await eng.gate.wait_calls(1)

    await eng.tick(T0 + QUARTER)
    await eng.tick(T0 + 2 * QUARTER)
    rows = await eng.executions(task.id)
    assert statuses(rows) == ["running", "queued", "skipped"]
    assert [row.slot_at for row in rows] == [T0, T0 + QUARTER, T0 + 2 * QUARTER]
    assert rows[2].status_msg == "a run is queued already (overlap=queue)"
    assert len(eng.gate.calls) == 1
    assert (await eng.task(task.id)).status is TaskStatus.RUNNING


async def test_overlap_queue_starts_the_pending_run_when_the_running_one_ends(
    eng: Engine,
) -> None:
    """overlap=queue: the pending run starts once the running one has ended."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "queue"})
    await eng.tick(at(0))
    [first] = await eng.gate.wait_calls(1)
    await eng.tick(T0 + QUARTER)
    await eng.tick(T0 + 2 * QUARTER)
    rows = await eng.executions(task.id)

    first.release.set()
    _, second = await eng.gate.wait_calls(2)
    assert second.ctx.execution_id == rows[1].id
    assert second.ctx.trigger.scheduled_for == format_utc(T0 + QUARTER)
    assert first.finished.is_set()
    second.release.set()
    await eng.drain()
    assert statuses(await eng.executions(task.id)) == ["done", "done", "skipped"]
    assert eng.gate.max_active == 1


async def test_overlap_parallel_runs_both(eng: Engine) -> None:
    """overlap=parallel: the next slot starts while the previous run goes on."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "parallel"})
    await eng.tick(at(0))
    await eng.tick(T0 + QUARTER)
    first, second = await eng.gate.wait_calls(2)
    assert not first.finished.is_set()
    assert statuses(await eng.executions(task.id)) == ["running", "running"]
    assert eng.gate.max_active == 2
    first.release.set()
    second.release.set()
    await eng.drain()
    assert statuses(await eng.executions(task.id)) == ["done", "done"]


async def test_overlap_replace_stops_the_running_one_with_the_reason(eng: Engine) -> None:
    """overlap=replace: the running execution is stopped (canceled) with the reason."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "replace"})
    await eng.tick(at(0))
    [first] = await eng.gate.wait_calls(1)
    old_id = first.ctx.execution_id

    await eng.tick(T0 + QUARTER)
    await first.wait_finished()
    await eng.finished(old_id)
    assert first.ended == "stopped"
    old, new = await eng.executions(task.id)
    assert (old.status, old.status_msg) == (
        ExecutionStatus.CANCELED,
        "replaced by a newer run (overlap=replace)",
    )
    assert old.finished_at == T0 + QUARTER
    assert (new.slot_at, new.trigger) == (T0 + QUARTER, TriggerKind.SCHEDULE)
    assert new.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


async def test_overlap_replace_starts_the_new_run_after_the_old_one_ended(
    eng: Engine,
) -> None:
    """overlap=replace: once the replaced execution has ended, the new one starts."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"overlap": "replace"})
    await eng.tick(at(0))
    [first] = await eng.gate.wait_calls(1)

    await eng.tick(T0 + QUARTER)
    _, second = await eng.gate.wait_calls(2)
    assert first.ended == "stopped"
    assert first.finished.is_set()
    assert eng.gate.max_active == 1
    assert second.ctx.trigger.scheduled_for == format_utc(T0 + QUARTER)
    old, new = await eng.executions(task.id)
    assert old.status is ExecutionStatus.CANCELED
    assert old.status_msg == "replaced by a newer run (overlap=replace)"
    assert new.status is ExecutionStatus.RUNNING
    second.release.set()
    await eng.drain()
    assert statuses(await eng.executions(task.id)) == ["canceled", "done"]


# -- catch-up -----------------------------------------------------------------------------

# The scheduler last looked at T0 (every 15 minutes) and next at 13:07: 13 slots, 10:00 to
# 13:00, are all more than the misfire grace late.
AFTER_DOWNTIME = T0 + timedelta(hours=3, minutes=7)
MISSED = [T0 + i * QUARTER for i in range(13)]


async def test_catch_up_once_runs_once_and_skips_the_rest(eng: Engine) -> None:
    """catch_up=once: one catch-up run for the newest missed slot, skipped rows for the others."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"catch_up": "once"})
    await eng.tick(AFTER_DOWNTIME)
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.trigger.kind == "catch_up"
    assert call.ctx.trigger.scheduled_for == "2026-01-05T13:00:00Z"
    call.release.set()
    await eng.drain()

    rows = await eng.executions(task.id)
    assert [row.slot_at for row in rows] == MISSED
    assert statuses(rows) == ["skipped"] * 12 + ["done"]
    assert {row.status_msg for row in rows[:-1]} == {
        "missed; coalesced into one catch-up run (catch_up=once)"
    }
    assert rows[-1].trigger is TriggerKind.CATCH_UP
    assert (await eng.task(task.id)).next_run_at == T0 + 13 * QUARTER > AFTER_DOWNTIME


async def test_catch_up_skip_skips_every_missed_slot(eng: Engine) -> None:
    """catch_up=skip: every missed slot is skipped with the reason; the next is in the future."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"catch_up": "skip"})
    await eng.tick(AFTER_DOWNTIME)
    await eng.drain()
    rows = await eng.executions(task.id)
    assert [row.slot_at for row in rows] == MISSED
    assert statuses(rows) == ["skipped"] * 13
    assert {row.status_msg for row in rows} == {
        "missed while taskd was not running (catch_up=skip)"
    }
    assert eng.gate.calls == []
    stored = await eng.task(task.id)
    assert stored.next_run_at == T0 + 13 * QUARTER > AFTER_DOWNTIME
    assert stored.status is TaskStatus.NEW


async def test_catch_up_all_runs_each_missed_slot_oldest_first_one_at_a_time(
    eng: Engine,
) -> None:
    """catch_up=all: each missed slot runs, oldest first, one after another."""
    task = await eng.create(schedules=EVERY_15_MIN, options={"catch_up": "all"})
    await eng.tick(AFTER_DOWNTIME)
    for index in range(13):
        calls = await eng.gate.wait_calls(index + 1)
        assert eng.gate.active == 1
        calls[index].release.set()
    await eng.drain()

    assert [c.ctx.trigger.scheduled_for for c in eng.gate.calls] == [
        format_utc(slot) for slot in MISSED
    ]
    assert {c.ctx.trigger.kind for c in eng.gate.calls} == {"catch_up"}
    assert eng.gate.max_active == 1
    rows = await eng.executions(task.id)
    assert [row.slot_at for row in rows] == MISSED
    assert statuses(rows) == ["done"] * 13
    assert {row.trigger for row in rows} == {TriggerKind.CATCH_UP}


async def test_catch_up_all_is_bounded_by_catch_up_limit(tmp_path: Path) -> None:
    """catch_up=all runs at most `catch_up_limit` missed slots, the oldest ones."""
    settings = SchedulerSettings(catch_up_limit=5)
    async with open_engine(tmp_path / "t.db", clock=FakeClock(at(-1)), settings=settings) as eng:
        task = await eng.create(
            schedules=EVERY_15_MIN, options={"catch_up": "all"}, params={"auto": True}
        )
        await eng.tick(AFTER_DOWNTIME)
        await eng.drain()
        rows = await eng.executions(task.id)
        assert [row.slot_at for row in rows] == MISSED[:5]
        assert {row.trigger for row in rows} == {TriggerKind.CATCH_UP}
        assert (await eng.task(task.id)).next_run_at > AFTER_DOWNTIME


async def test_catch_up_after_a_restart_goes_through_the_due_index(tmp_path: Path) -> None:
    """A new process finds next_run_at hours in the past and applies catch_up=once."""
    db = tmp_path / "taskd.db"
    async with open_engine(db, clock=FakeClock(at(-1))) as first:
        task = await first.create(schedules=EVERY_15_MIN, params={"auto": True})
    async with open_engine(db, clock=FakeClock(AFTER_DOWNTIME), start=True) as second:
        [call] = await second.gate.wait_calls(1)
        await call.wait_finished()
        await second.drain()
        rows = await second.executions(task.id)
        assert statuses(rows) == ["skipped"] * 12 + ["done"]
        assert rows[-1].trigger is TriggerKind.CATCH_UP
        assert (await second.task(task.id)).next_run_at == T0 + 13 * QUARTER


# -- the wall clock -----------------------------------------------------------------------


async def test_wall_clock_jump_sends_due_slots_through_catch_up(eng: Engine) -> None:
    """The wall clock jumps 2 h: the next tick skips the missed slots and runs the on-time one."""
    task = await eng.create(schedules=EVERY_15_MIN, params={"auto": True})
    await eng.tick(at(0))
    await eng.drain()

    eng.clock.jump(2 * 3600)  # now 12:00:00, exactly on a slot
    await eng.tick()
    await eng.drain()
    rows = await eng.executions(task.id)
    assert [row.slot_at for row in rows] == [T0 + i * QUARTER for i in range(9)]
    assert statuses(rows) == ["done"] + ["skipped"] * 7 + ["done"]
    assert {row.status_msg for row in rows[1:-1]} == {
        "missed; an on-time run follows (catch_up=once)"
    }
    assert rows[-1].trigger is TriggerKind.SCHEDULE
    assert [c.ctx.trigger.scheduled_for for c in eng.gate.calls] == [
        "2026-01-05T10:00:00Z",
        "2026-01-05T12:00:00Z",
    ]
    assert (await eng.task(task.id)).next_run_at == T0 + 9 * QUARTER


async def test_task_changed_wakes_the_real_loop(tmp_path: Path) -> None:
    """With the real loop asleep (nothing due), a new task due in 0.15 s starts on time."""
    clock = SystemClock()
    async with open_engine(tmp_path / "taskd.db", clock=clock, start=True) as eng:
        await asyncio.sleep(0.05)  # the loop now sleeps its full second: nothing is due
        due = clock.now() + timedelta(seconds=0.15)
        created = clock.monotonic()
        task = await eng.create(next_run_at=due, params={"auto": True})
        [call] = await eng.gate.wait_calls(1)
        waited = clock.monotonic() - created
        await eng.drain()
        assert 0.1 <= waited < 0.6  # woken, not at the loop's one-second timer
        [row] = await eng.executions(task.id)
        assert (row.status, row.slot_at) == (DONE, due)
        assert row.started_at is not None
        assert row.started_at >= due
        assert call.ctx.trigger.kind == "schedule"


async def test_a_stale_heap_entry_does_not_lose_the_task(eng: Engine) -> None:
    """An edited task whose old and new due times both pass in one tick still fires."""
    task = await eng.create(schedules=[{"interval_sec": 3600}], params={"auto": True})
    assert task.next_run_at == T0  # heap entry at 10:00
    eng.clock.set(at(-600))
    spec = eng.core.validate(
        {
            "name": "job",
            "task_module": "gate",
            "task_params": {"auto": True},
            "schedules": [{"interval_sec": 3600, "start_at": "2026-01-05T10:30:00Z"}],
        }
    )
    task = await eng.core.update_task(task.id, spec)
    assert task.next_run_at == at(1800)  # heap entry at 10:30, the 10:00 one is stale

    eng.clock.jump(2 * 3600)  # a suspended machine wakes at 11:50
    await eng.tick()
    await eng.tick()  # the loop ticks again within a second
    await eng.drain()
    await eng.tick(at(2 * 3600 + 1800))  # 12:30, the next slot
    await eng.drain()
    rows = await eng.executions(task.id)
    # 10:30 and 11:30 were missed (catch_up=once: one run for 11:30); 12:30 runs on time.
    assert [(row.slot_at, str(row.status)) for row in rows] == [
        (at(1800), "skipped"),
        (at(5400), "done"),
        (at(9000), "done"),
    ]


@pytest.mark.slow  # the real loop, a second of real time
async def test_the_real_loop_notices_a_wall_clock_jump_within_a_second(tmp_path: Path) -> None:
    """With the loop asleep and nothing due for 2 h, a 2 h jump fires the slot within ~1 s."""
    clock = FakeClock(at(-7200))
    async with open_engine(tmp_path / "taskd.db", clock=clock, start=True) as eng:
        task = await eng.create(next_run_at=T0, params={"auto": True})
        await asyncio.sleep(0.05)  # the loop sleeps: its next entry is 2 h away
        assert eng.gate.calls == []
        clock.jump(7200)
        [call] = await eng.gate.wait_calls(1, timeout_sec=1.8)  # the loop wakes every 1 s
        await eng.drain()
        assert call.ctx.trigger.kind == "schedule"
        [row] = await eng.executions(task.id)
        assert (row.status, row.slot_at) == (DONE, T0)


async def test_a_failed_claim_is_retried_by_the_next_tick(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that fails once (the database busy) leaves the slot due for the next tick."""
    task = await eng.create(schedules=EVERY_15_MIN, params={"auto": True})
    real_claim = eng.store.claim
    failures = []

    async def claim_failing_once(*args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(True)
            raise sqlite3.OperationalError("database is locked")
        return await real_claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(eng.store, "claim", claim_failing_once)
    with pytest.raises(sqlite3.OperationalError):
        await eng.tick(at(0))
    assert await eng.executions(task.id) == []
    await eng.tick(at(1))  # the loop ticks again
    await eng.drain()
    [row] = await eng.executions(task.id)
    assert (row.slot_at, row.status) == (T0, DONE)


async def test_a_claimed_slot_of_a_task_disabled_before_its_instant_is_skipped(
    eng: Engine,
) -> None:
    """A slot claimed ahead is skipped, not run, if the task is disabled before the instant."""
    task = await eng.create(schedules=EVERY_15_MIN, params={"auto": True})
    await eng.tick(at(-0.05))  # claimed, its start committed ahead (reserved)
    [row] = await eng.executions(task.id)
    assert row.status is ExecutionStatus.RUNNING
    disabled = eng.core.validate(
        {
            "name": "job",
            "task_module": "gate",
            "task_params": {"auto": True},
            "schedules": EVERY_15_MIN,
            "enabled": False,
        }
    )
    await eng.core.update_task(task.id, disabled)
    await eng.tick(at(0))
    await eng.drain()
    assert eng.gate.calls == []
    [row] = await eng.executions(task.id)
    assert row.status is SKIPPED
    assert row.status_msg is not None
    assert "disabled" in row.status_msg


# -- one-shot and disabled tasks ----------------------------------------------------------


async def test_one_shot_task_runs_once(eng: Engine) -> None:
    """A task with only next_run_at runs once; then next_run_at is None."""
    task = await eng.create(next_run_at=T0, params={"auto": True})
    assert task.next_run_at == T0
    await eng.tick(at(0))
    await eng.drain()
    stored = await eng.task(task.id)
    assert stored.next_run_at is None
    assert stored.status is TaskStatus.DONE
    for later in (at(1), at(86400)):
        await eng.tick(later)
    await eng.drain()
    [row] = await eng.executions(task.id)
    assert (row.status, row.slot_at, row.trigger) == (DONE, T0, TriggerKind.SCHEDULE)
    assert len(eng.gate.calls) == 1


async def test_next_run_at_null_never_runs(eng: Engine) -> None:
    """next_run_at = null ("do not run") gives a disabled task that never fires."""
    task = await eng.create(next_run_at=None, schedules=EVERY_15_MIN)
    assert task.enabled is False
    assert task.next_run_at is None
    for offset in (0, 900, 86400):
        await eng.tick(at(offset))
    assert await eng.executions(task.id) == []
    assert eng.gate.calls == []


async def test_disabled_task_never_runs(eng: Engine) -> None:
    """enabled = false never fires, also when it was disabled after being scheduled."""
    off = await eng.create("off", enabled=False, schedules=EVERY_15_MIN)
    assert off.next_run_at is None
    later = await eng.create("later", schedules=EVERY_15_MIN)
    assert later.next_run_at == T0  # in the heap now
    spec = eng.core.validate(
        {"name": "later", "task_module": "gate", "schedules": EVERY_15_MIN, "enabled": False}
    )
    assert (await eng.core.update_task(later.id, spec)).next_run_at is None
    for offset in (0, 900, 86400):
        await eng.tick(at(offset))
    assert await eng.executions(off.id) == []
    assert await eng.executions(later.id) == []
    assert eng.gate.calls == []


# -- retries ------------------------------------------------------------------------------


async def test_retries_with_doubling_delay_then_stop(eng: Engine) -> None:
    """max_retries=2: attempts 0, 1, 2, each retry due after a doubled delay; then no more."""
    task = await eng.create(
        schedules=[{"interval_sec": 86400}],
        params={"auto": True, "fail": "boom"},
        options={"max_retries": 2, "retry_delay_sec": 10},
    )
    assert task.next_run_at == T0 + timedelta(hours=14)  # the next midnight UTC
    first_due = task.next_run_at
    eng.clock.set(first_due - timedelta(seconds=1))

    await eng.tick(first_due)
    await eng.drain()
    rows = await eng.executions(task.id)
    assert [(r.trigger, r.attempt, r.status) for r in rows] == [
        ("schedule", 0, "error"),
        ("retry", 1, "queued"),
    ]
    assert rows[0].status_msg == "boom"
    assert rows[1].scheduled_for == first_due + timedelta(seconds=10)
    assert rows[1].slot_at is None

    await eng.tick(first_due + timedelta(seconds=9.9))
    assert len(eng.gate.calls) == 1  # not yet due

    await eng.tick(first_due + timedelta(seconds=10))
    await eng.drain()
    rows = await eng.executions(task.id)
    assert rows[2].scheduled_for == first_due + timedelta(seconds=10 + 20)
    await eng.tick(first_due + timedelta(seconds=30))
    await eng.drain()
    await eng.tick(first_due + timedelta(seconds=3600))
    await eng.drain()

    rows = await eng.executions(task.id)
    assert [(r.trigger, r.attempt, r.status, r.status_msg) for r in rows] == [
        ("schedule", 0, "error", "boom"),
        ("retry", 1, "error", "boom"),
        ("retry", 2, "error", "boom"),
    ]
    assert [c.ctx.trigger.attempt for c in eng.gate.calls] == [0, 1, 2]
    assert [c.ctx.trigger.kind for c in eng.gate.calls] == ["schedule", "retry", "retry"]
    assert (await eng.task(task.id)).status is TaskStatus.ERROR


async def test_a_user_stop_is_not_retried(eng: Engine) -> None:
    """A stopped execution ends canceled and queues no retry."""
    task = await eng.create(options={"max_retries": 2, "retry_delay_sec": 1})
    execution_id = await eng.core.run(task.id)
    await eng.tick()
    await eng.gate.wait_calls(1)
    await eng.core.stop(task.id)
    await eng.finished(execution_id)
    await eng.tick(at(60))
    [row] = await eng.executions(task.id)
    assert (row.status, row.status_msg) == (ExecutionStatus.CANCELED, "stopped")
    assert len(eng.gate.calls) == 1


async def test_a_user_stop_of_a_command_that_exits_nonzero_is_not_retried(eng: Engine) -> None:
    """A shell command that exits 3 on SIGTERM after a stop is not retried."""
    task = await eng.create(
        module="shell",
        params={"command": "trap 'exit 3' TERM; echo up; while :; do sleep 0.01; done"},
        options={"max_retries": 2, "retry_delay_sec": 1},
    )
    execution_id = await eng.core.run(task.id)
    await eng.tick()

    async def started() -> bool:
        return any(e.msg == "up" for e in await eng.store.read_log(task.id))

    await until(started)
    await eng.core.stop(task.id)
    await eng.finished(execution_id)
    rows = await eng.executions(task.id)
    assert [r.trigger for r in rows] == [TriggerKind.MANUAL]


# -- concurrency --------------------------------------------------------------------------


async def test_max_running_queue_orders_by_priority_then_due_time(tmp_path: Path) -> None:
    """With max_running=1, waiting slots start by priority, then by due time."""
    async with open_engine(tmp_path / "t.db", clock=FakeClock(at(-1)), max_running=1) as eng:
        blocker = await eng.create("blocker")
        await eng.core.run(blocker.id)
        await eng.tick()
        [hold] = await eng.gate.wait_calls(1)
        tasks = {
            "low-early": (0, at(0.5)),
            "low-late": (0, at(1)),
            "high-latest": (5, at(2)),
            "mid": (1, at(1.5)),
        }
        for name, (priority, due) in tasks.items():
            await eng.create(
                name, next_run_at=due, params={"label": name}, options={"priority": priority}
            )
        await eng.tick(at(1))
        await eng.tick(at(2))
        assert eng.runner.queued_count == 4
        hold.release.set()
        for index in range(1, 5):
            calls = await eng.gate.wait_calls(index + 1)
            calls[index].release.set()
        await eng.drain()
        assert eng.gate.labels() == ["", "high-latest", "mid", "low-early", "low-late"]
        assert eng.gate.max_active == 1


# -- crash recovery -----------------------------------------------------------------------


async def test_crash_leaves_no_execution_running_and_retries_it(tmp_path: Path) -> None:
    """Rows a dead process left `running`/`paused` become error "interrupted"; a task with
    retries gets one."""
    db = tmp_path / "taskd.db"
    async with open_engine(db, clock=FakeClock(at(-1))) as dead:
        retried = await dead.create(
            "retried", params={"auto": True}, options={"max_retries": 1, "retry_delay_sec": 5}
        )
        plain = await dead.create("plain")
        ids = await dead.store.add_executions(
            [
                NewExecution(task_id=retried.id, trigger=TriggerKind.MANUAL, scheduled_for=T0),
                NewExecution(task_id=plain.id, trigger=TriggerKind.MANUAL, scheduled_for=T0),
            ],
            T0,
        )
        await dead.store.mark_started_many(
            [(ids[0], retried.id), (ids[1], plain.id)], T0, "dead-host"
        )
        dead.store.set_running_status_nowait(ids[1], plain.id, ExecutionStatus.PAUSED)
        await dead.store.flush()

    restart = at(100)
    async with open_engine(db, clock=FakeClock(restart), start=True) as eng:
        await settle(eng.store)
        interrupted, retry = await eng.executions(retried.id)
        assert (interrupted.status, interrupted.status_msg) == (
            ExecutionStatus.ERROR,
            "interrupted",
        )
        assert interrupted.finished_at == restart
        assert (retry.trigger, retry.attempt, retry.status) == ("retry", 1, "queued")
        assert retry.scheduled_for == restart + timedelta(seconds=5)
        [paused] = await eng.executions(plain.id)
        assert (paused.status, paused.status_msg) == (ExecutionStatus.ERROR, "interrupted")
        stored = await eng.task(plain.id)
        assert (stored.status, stored.status_msg) == (TaskStatus.ERROR, "interrupted")

        await eng.tick(restart + timedelta(seconds=5))
        [call] = await eng.gate.wait_calls(1)
        await call.wait_finished()
        await eng.drain()
        await eng.tick(restart + timedelta(seconds=6))
        await eng.drain()
        _, retry = await eng.executions(retried.id)
        assert (retry.status, retry.attempt) == (DONE, 1)
        assert call.ctx.trigger.kind == "retry"
        assert len(eng.gate.calls) == 1  # enqueued by recovery and by the queued rows: once


async def _die_with_a_claimed_slot(db: Path, catch_up: str) -> int:
    """Claim the 10:00 slot (look-ahead: its start committed ahead) and stop before the
    instant: the stop takes the start back, leaving the row `queued`."""
    async with open_engine(db, clock=FakeClock(at(-1))) as dead:
        task = await dead.create(
            schedules=EVERY_15_MIN, params={"auto": True}, options={"catch_up": catch_up}
        )
        await dead.tick(at(-0.05))
        [row] = await dead.executions(task.id)
        assert (row.status, row.started_at) == (ExecutionStatus.RUNNING, T0)
    async with open_engine(db, clock=FakeClock(at(-1))) as check:
        [row] = await check.executions(task.id)
        assert (row.status, row.started_at) == (ExecutionStatus.QUEUED, None)
    return task.id


async def test_queued_rows_of_missed_slots_go_through_catch_up_skip(tmp_path: Path) -> None:
    """catch_up=skip: a queued row left by a dead process is skipped, like the later slots."""
    db = tmp_path / "taskd.db"
    task_id = await _die_with_a_claimed_slot(db, "skip")
    async with open_engine(db, clock=FakeClock(AFTER_DOWNTIME), start=True) as eng:
        await eng.tick()
        await eng.drain()
        rows = await eng.executions(task_id)
        assert [row.slot_at for row in rows] == MISSED
        assert statuses(rows) == ["skipped"] * 13
        assert rows[0].status_msg == "missed while taskd was not running (catch_up=skip)"
        assert eng.gate.calls == []


async def test_queued_rows_of_missed_slots_go_through_catch_up_all(tmp_path: Path) -> None:
    """catch_up=all: the queued row runs first, then every later missed slot, oldest first."""
    db = tmp_path / "taskd.db"
    task_id = await _die_with_a_claimed_slot(db, "all")
    async with open_engine(db, clock=FakeClock(AFTER_DOWNTIME), start=True) as eng:
        await eng.gate.wait_calls(13)
        await eng.drain()
        rows = await eng.executions(task_id)
        assert [row.slot_at for row in rows] == MISSED
        assert statuses(rows) == ["done"] * 13
        assert [c.ctx.trigger.scheduled_for for c in eng.gate.calls] == [
            format_utc(slot) for slot in MISSED
        ]
        assert eng.gate.max_active == 1


async def test_queued_rows_of_missed_slots_go_through_catch_up_once(tmp_path: Path) -> None:
    """catch_up=once: a downtime yields one run, whether its first slot was claimed or not."""
    db = tmp_path / "taskd.db"
    task_id = await _die_with_a_claimed_slot(db, "once")
    async with open_engine(db, clock=FakeClock(AFTER_DOWNTIME), start=True) as eng:
        await eng.gate.wait_calls(1)
        await eng.drain()
        await eng.tick()
        await eng.drain()
        rows = await eng.executions(task_id)
        assert [row.slot_at for row in rows] == MISSED
        assert sorted(statuses(rows)) == ["done"] + ["skipped"] * 12  # none left queued
        assert len(eng.gate.calls) == 1


# -- commit ahead: what a crash leaves (Store contract, "Starts committed ahead") -----------


def _crash_image(db: Path, image: Path) -> None:
    """Copy what is committed in `db` now: the state a kill -9 at this moment leaves."""
    with sqlite3.connect(db) as source, sqlite3.connect(image) as target:
        source.backup(target)
    source.close()
    target.close()


async def _crash_with_a_start_committed_ahead(tmp_path: Path) -> tuple[Path, int]:
    db, image = tmp_path / "taskd.db", tmp_path / "crashed.db"
    async with open_engine(db, clock=FakeClock(at(-1))) as dead:
        task = await dead.create(schedules=EVERY_15_MIN, params={"auto": True})
        await dead.tick(at(-0.05))
        [row] = await dead.executions(task.id)
        assert (row.status, row.started_at) == (ExecutionStatus.RUNNING, T0)
        assert dead.gate.calls == []
        _crash_image(db, image)
    return image, task.id


async def test_a_crash_before_the_instant_leaves_a_start_that_is_claimed_again(
    tmp_path: Path,
) -> None:
    """Killed after its start was committed ahead but before the instant, restarted before
    the instant: the row was never started, so it is `queued` again (not interrupted) and
    starts once, at its instant."""
    image, task_id = await _crash_with_a_start_committed_ahead(tmp_path)
    async with open_engine(image, clock=FakeClock(at(-0.02)), start=True) as eng:
        [row] = await eng.executions(task_id)
        assert (row.status, row.started_at) == (ExecutionStatus.QUEUED, None)
        await eng.tick(at(-0.01))
        assert eng.gate.calls == []
        await eng.tick(at(0))
        [call] = await eng.gate.wait_calls(1)
        assert call.ctx.execution_id == row.id
        await eng.drain()
        [row] = await eng.executions(task_id)
        assert (row.status, row.started_at) == (ExecutionStatus.DONE, T0)
        assert len(eng.gate.calls) == 1


async def test_a_crash_before_the_instant_restarted_after_it_counts_as_interrupted(
    tmp_path: Path,
) -> None:
    """The same crash, restarted after the instant: the start may have happened (the rule
    cannot tell), so the run is interrupted and the retry policy decides; never run twice."""
    image, task_id = await _crash_with_a_start_committed_ahead(tmp_path)
    async with open_engine(image, clock=FakeClock(at(60)), start=True) as eng:
        await eng.drain()
        [row] = await eng.executions(task_id)
        assert (row.status, row.status_msg) == (ExecutionStatus.ERROR, "interrupted")
        assert eng.gate.calls == []

"""The runner with a real store and real modules: endings, actions, limits and shutdown.

Jobs are committed as `queued` rows and handed to `Runner.submit` directly (the scheduler
is present, as in the daemon, but its loop is off). Real time passes only where the
runner's own timeout, stop grace or shutdown grace is the subject, and then briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from disk_faults import SqliteDiskFaults
from engine_fixtures import T0, Engine, FakeClock, at, open_engine, settle, until
from structlog.testing import capture_logs

from taskd.errors import ActionError, StoreUnavailableError
from taskd.model import Execution, ExecutionStatus, Job, Outcome, Task, TaskStatus, TriggerKind
from taskd.modules.base import Trigger
from taskd.schedule import format_utc
from taskd.store import NewExecution

GRACE_SEC = 0.2  # the runner's stop_grace_sec in these tests
DISK = SqliteDiskFaults()  # the engine's store is SQLite


@pytest.fixture
async def eng(tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine at T0 with the scheduler's loop off and a 0.2 s stop grace (this module's
    own: the shared `eng` starts one second before T0 with the default grace)."""
    async with open_engine(
        tmp_path / "taskd.db", clock=FakeClock(T0), stop_grace_sec=GRACE_SEC
    ) as engine:
        yield engine


async def submit(
    eng: Engine,
    task: Task,
    *,
    due: datetime | None = None,
    kind: TriggerKind = TriggerKind.MANUAL,
) -> int:
    """Commit a queued execution of `task` and hand it to the runner; return its id."""
    due = due or eng.clock.now()
    [execution_id] = await eng.store.add_executions(
        [NewExecution(task_id=task.id, trigger=kind, scheduled_for=due)], eng.clock.now()
    )
    assert execution_id is not None
    trigger = Trigger(kind=kind, scheduled_for=format_utc(due))
    eng.runner.submit(Job(execution_id=execution_id, task=task, trigger=trigger, due=due))
    return execution_id


async def row(eng: Engine, execution_id: int) -> Execution:
    """An execution row as committed."""
    await settle(eng.store)
    return await eng.store.get_execution(execution_id)


# -- endings ------------------------------------------------------------------------------


async def test_a_run_that_returns_is_done_with_its_message(eng: Engine) -> None:
    """A module that returns ends `done` with its message; the row has start and end times."""
    task = await eng.create(params={"result": "all good"})
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.execution_id == execution_id
    assert call.ctx.task_name == "job"
    assert call.ctx.stop_grace_sec == GRACE_SEC
    eng.clock.advance(5)
    call.release.set()
    await eng.finished(execution_id)
    done = await row(eng, execution_id)
    assert (done.status, done.status_msg) == (ExecutionStatus.DONE, "all good")
    assert (done.started_at, done.finished_at) == (T0, at(5))
    assert done.dispatcher == "test-host"
    log = await eng.store.read_log(task.id)
    assert [(entry.level, entry.msg) for entry in log] == [("info", "done: all good")]


async def test_timeout_ends_in_error(eng: Engine) -> None:
    """A run longer than task_timeout_sec is cancelled and ends `error`, "timed out after"."""
    created = await eng.create()
    # A fractional timeout keeps the test short; the API only accepts whole seconds.
    task = dataclasses.replace(created, spec={**created.spec, "task_timeout_sec": 0.2})
    loop = asyncio.get_running_loop()
    begun = loop.time()
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    await call.wait_finished()
    await eng.finished(execution_id)
    assert 0.19 <= loop.time() - begun < 1.0
    assert call.ended == "cancelled"
    ended = await row(eng, execution_id)
    assert (ended.status, ended.status_msg) == (ExecutionStatus.ERROR, "timed out after 0.2 s")
    stored = await eng.task(task.id)
    assert (stored.status, stored.status_msg) == (TaskStatus.ERROR, "timed out after 0.2 s")
    assert eng.runner.running_count == 0


async def test_module_errors_end_in_error_and_leave_other_runs_alone(eng: Engine) -> None:
    """ModuleError and any other exception end in `error` with the message; others go on."""
    calm = await eng.create("calm")
    broken = await eng.create("broken", params={"auto": True, "fail": "bad input"})
    crashing = await eng.create("crashing", params={"auto": True, "crash": "boom"})
    calm_id = await submit(eng, calm)
    broken_id = await submit(eng, broken)
    crashing_id = await submit(eng, crashing)
    calls = await eng.gate.wait_calls(3)
    await eng.finished(broken_id)
    await eng.finished(crashing_id)

    assert ((await row(eng, broken_id)).status_msg) == "bad input"
    assert ((await row(eng, crashing_id)).status_msg) == "RuntimeError: boom"
    assert {(await row(eng, i)).status for i in (broken_id, crashing_id)} == {ExecutionStatus.ERROR}
    assert (await eng.task(crashing.id)).status_msg == "RuntimeError: boom"
    assert (await row(eng, calm_id)).status is ExecutionStatus.RUNNING
    assert eng.runner.running_for_task(calm.id) == [calm_id]

    calls[0].release.set()
    await eng.finished(calm_id)
    assert (await row(eng, calm_id)).status is ExecutionStatus.DONE


async def test_the_tasks_status_follows_its_latest_execution(eng: Engine) -> None:
    """status, status_msg, status_percent and run_*_at follow the latest execution."""
    task = await eng.create(params={"percent": 40, "result": "fine"})
    assert (await eng.task(task.id)).status is TaskStatus.NEW
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    await settle(eng.store)
    running = await eng.task(task.id)
    assert (running.status, running.status_percent) == (TaskStatus.RUNNING, 40)
    assert (running.run_started_at, running.run_finished_at) == (T0, None)
    assert running.last_execution_id == execution_id
    assert (await row(eng, execution_id)).progress == 40

    eng.clock.advance(60)
    call.release.set()
    await eng.finished(execution_id)
    done = await eng.task(task.id)
    assert (done.status, done.status_msg, done.status_percent) == (TaskStatus.DONE, "fine", 100)
    assert (done.run_started_at, done.run_finished_at, done.run_canceled_at) == (T0, at(60), None)

    eng.clock.advance(60)
    second_id = await submit(eng, task)
    await eng.gate.wait_calls(2)
    await settle(eng.store)
    again = await eng.task(task.id)
    assert (again.status, again.status_msg) == (TaskStatus.RUNNING, None)
    assert (again.run_started_at, again.run_finished_at) == (at(120), None)
    eng.clock.advance(1)
    eng.runner.stop(second_id)
    await eng.finished(second_id)
    canceled = await eng.task(task.id)
    assert (canceled.status, canceled.status_msg) == (TaskStatus.CANCELED, "stopped")
    assert canceled.run_canceled_at == canceled.run_finished_at == at(121)


async def test_params_the_module_no_longer_accepts_end_in_error(eng: Engine) -> None:
    """A stored definition the module refuses now ends in `error` without running."""
    task = await eng.store.insert_task(
        name="stale",
        source="api",
        spec={"name": "stale", "task_module": "gate", "task_params": {"gone": 1}},
        enabled=True,
        next_run_at=None,
        now=T0,
    )
    execution_id = await submit(eng, task)

    async def recorded() -> bool:
        return (await row(eng, execution_id)).status.finished

    await until(recorded)
    ended = await row(eng, execution_id)
    assert ended.status is ExecutionStatus.ERROR
    assert ended.status_msg is not None
    assert "task_params.gone" in ended.status_msg
    assert eng.gate.calls == []


async def test_a_refused_run_sets_the_task_status(eng: Engine) -> None:
    """The task of a run refused for its params shows `error`, not `queued`."""
    task = await eng.store.insert_task(
        name="stale",
        source="api",
        spec={"name": "stale", "task_module": "gate", "task_params": {"gone": 1}},
        enabled=True,
        next_run_at=None,
        now=T0,
    )
    execution_id = await submit(eng, task)

    async def recorded() -> bool:
        return (await row(eng, execution_id)).status.finished

    await until(recorded)
    assert (await eng.task(task.id)).status is TaskStatus.ERROR


async def test_drain_returns_after_a_refused_run(eng: Engine) -> None:
    """Runner.drain() returns once a refused job was recorded (nothing queued or running)."""
    task = await eng.store.insert_task(
        name="stale",
        source="api",
        spec={"name": "stale", "task_module": "gate", "task_params": {"gone": 1}},
        enabled=True,
        next_run_at=None,
        now=T0,
    )
    await submit(eng, task)
    async with asyncio.timeout(0.5):
        await eng.runner.drain()


# -- pause, resume, stop, force stop ------------------------------------------------------


async def test_pause_blocks_at_the_checkpoint_until_resume(eng: Engine) -> None:
    """Paused: the module waits at its checkpoint and row and task say `paused`."""
    task = await eng.create()
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    eng.runner.pause(execution_id)
    assert call.ctx.paused
    call.release.set()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await call.checkpoint_passed.wait()
    assert (await row(eng, execution_id)).status is ExecutionStatus.PAUSED
    assert (await eng.task(task.id)).status is TaskStatus.PAUSED
    with pytest.raises(ActionError, match="paused already"):
        eng.runner.pause(execution_id)

    eng.runner.resume(execution_id)
    await eng.finished(execution_id)
    assert call.checkpoint_passed.is_set()
    assert (await row(eng, execution_id)).status is ExecutionStatus.DONE
    assert (await eng.task(task.id)).status is TaskStatus.DONE


async def test_resume_of_a_running_execution_is_refused(eng: Engine) -> None:
    """resume of an execution that is not paused, and actions on unknown ids, raise."""
    task = await eng.create()
    execution_id = await submit(eng, task)
    await eng.gate.wait_calls(1)
    with pytest.raises(ActionError, match="is not paused"):
        eng.runner.resume(execution_id)
    for action in (eng.runner.pause, eng.runner.resume, eng.runner.stop, eng.runner.force_stop):
        with pytest.raises(ActionError, match="is not running"):
            action(execution_id + 100)


async def test_stop_is_cooperative_and_ends_canceled(eng: Engine) -> None:
    """stop sets ctx.stopping; the module saves its state and returns; the run is canceled."""
    task = await eng.create(params={"save_state": {"cursor": 7}})
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    eng.runner.stop(execution_id, "operator said so")
    assert call.ctx.stopping
    await eng.finished(execution_id)
    assert call.ended == "stopped"
    ended = await row(eng, execution_id)
    assert (ended.status, ended.status_msg) == (ExecutionStatus.CANCELED, "operator said so")
    stored = await eng.task(task.id)
    assert stored.state == {"cursor": 7}
    assert stored.run_canceled_at == T0


async def test_stop_of_a_paused_execution_lets_it_stop(eng: Engine) -> None:
    """A stop resumes a paused module so that it can notice the stop and return."""
    task = await eng.create()
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    eng.runner.pause(execution_id)
    eng.runner.stop(execution_id)
    await eng.finished(execution_id)
    assert call.ended == "stopped"
    assert (await row(eng, execution_id)).status is ExecutionStatus.CANCELED


async def test_stop_is_forced_after_the_grace_period(eng: Engine) -> None:
    """A module that ignores the stop is cancelled after stop_grace_sec and ends canceled."""
    task = await eng.create(params={"ignore_stop": True})
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    eng.runner.stop(execution_id)
    await call.wait_finished()
    waited = loop.time() - asked
    await eng.finished(execution_id)
    assert GRACE_SEC * 0.95 <= waited < GRACE_SEC + 0.5
    assert call.ended == "cancelled"
    ended = await row(eng, execution_id)
    assert (ended.status, ended.status_msg) == (
        ExecutionStatus.CANCELED,
        "stopped (forced after 0.2 s)",
    )


async def test_force_stop_cancels_at_once(eng: Engine) -> None:
    """force_stop cancels the module now, without waiting for the grace period."""
    task = await eng.create(params={"ignore_stop": True})
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    eng.runner.force_stop(execution_id)
    await call.wait_finished()
    assert loop.time() - asked < GRACE_SEC / 2
    await eng.finished(execution_id)
    assert call.ended == "cancelled"
    ended = await row(eng, execution_id)
    assert (ended.status, ended.status_msg) == (ExecutionStatus.CANCELED, "force stopped")
    assert (await eng.task(task.id)).status is TaskStatus.CANCELED


async def test_force_stop_kills_a_shell_command(eng: Engine) -> None:
    """force_stop of the real shell module ends its process and the run, canceled."""
    task = await eng.create("sleeper", module="shell", params={"command": "echo up; exec sleep 30"})
    execution_id = await submit(eng, task)

    async def started() -> bool:
        return any(entry.msg == "up" for entry in await eng.store.read_log(task.id))

    await until(started)
    eng.runner.force_stop(execution_id)
    await eng.finished(execution_id)
    ended = await row(eng, execution_id)
    assert (ended.status, ended.status_msg) == (ExecutionStatus.CANCELED, "force stopped")


# -- real modules -------------------------------------------------------------------------


async def test_real_sleep_and_shell_modules(eng: Engine) -> None:
    """The built-in sleep and shell modules run to their recorded endings."""
    nap = await eng.create("nap", module="sleep", params={"seconds": 0.05, "steps": 2})
    echo = await eng.create("echo", module="shell", params={"argv": ["echo", "hello"]})
    fail = await eng.create("fail", module="shell", params={"command": "exit 3"})
    ids = [await submit(eng, task) for task in (nap, echo, fail)]
    await eng.drain()
    endings = [((r := await row(eng, i)).status, r.status_msg) for i in ids]
    assert endings == [
        (ExecutionStatus.DONE, "slept 0.05 s in 2 steps"),
        (ExecutionStatus.DONE, "exit code 0"),
        (ExecutionStatus.ERROR, "exit code 3"),
    ]
    assert (await row(eng, ids[0])).progress == 100
    assert "hello" in [entry.msg for entry in await eng.store.read_log(echo.id)]


# -- concurrency --------------------------------------------------------------------------


async def test_max_running_queue_orders_by_priority_then_due_time(tmp_path: Path) -> None:
    """With max_running=1, waiting jobs start by priority (higher first), then due time."""
    async with open_engine(tmp_path / "t.db", clock=FakeClock(T0), max_running=1) as eng:
        blocker = await eng.create("blocker", params={"label": "blocker"})
        await submit(eng, blocker)
        [hold] = await eng.gate.wait_calls(1)
        waiting = [  # (name, priority, due), submitted in this order
            ("late", 0, at(30)),
            ("urgent-late", 9, at(40)),
            ("early", 0, at(10)),
            ("urgent-early", 9, at(20)),
            ("middle", 3, at(50)),
        ]
        ids = []
        for name, priority, due in waiting:
            task = await eng.create(name, params={"label": name}, options={"priority": priority})
            ids.append(await submit(eng, task, due=due))
        await settle(eng.store)
        assert eng.runner.running_count == 1
        assert eng.runner.queued_count == 5
        assert all(eng.runner.is_active(i) for i in ids)
        assert {(await row(eng, i)).status for i in ids} == {ExecutionStatus.QUEUED}

        hold.release.set()
        for index in range(1, 6):
            calls = await eng.gate.wait_calls(index + 1)
            calls[index].release.set()
        await eng.drain()
        assert eng.gate.labels() == [
            "blocker",
            "urgent-early",
            "urgent-late",
            "middle",
            "early",
            "late",
        ]
        assert eng.gate.max_active == 1


# -- shutdown -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_shutdown_lets_short_runs_finish_and_stops_long_ones(tmp_path: Path) -> None:
    """shutdown(grace): runs ending within it finish; the rest are stopped (cooperatively,
    then forced) and their endings recorded; queued jobs stay queued."""
    clock = FakeClock(T0)
    async with open_engine(
        tmp_path / "t.db", clock=clock, max_running=3, stop_grace_sec=GRACE_SEC
    ) as eng:
        short = await eng.create("short", params={"label": "short"})
        long = await eng.create("long", params={"label": "long", "save_state": {"at": 1}})
        stubborn = await eng.create("stubborn", params={"label": "stubborn", "ignore_stop": True})
        waiting = await eng.create("waiting", params={"label": "waiting"})
        ids = [await submit(eng, task) for task in (short, long, stubborn, waiting)]
        calls = await eng.gate.wait_calls(3)
        asyncio.get_running_loop().call_later(0.05, calls[0].release.set)

        async with asyncio.timeout(2):
            await eng.runner.shutdown(0.15)
        await settle(eng.store)
        endings = [((r := await row(eng, i)).status, r.status_msg) for i in ids]
        assert endings == [
            (ExecutionStatus.DONE, None),
            (ExecutionStatus.CANCELED, "daemon shutting down"),
            (ExecutionStatus.CANCELED, f"daemon shutting down (forced after {GRACE_SEC} s)"),
            (ExecutionStatus.QUEUED, None),
        ]
        assert [call.ended for call in calls] == ["returned", "stopped", "cancelled"]
        assert (await eng.task(long.id)).state == {"at": 1}
        assert eng.runner.running_count == 0
        assert len(eng.gate.calls) == 3

        eng.runner.submit(
            Job(
                execution_id=ids[3],
                task=waiting,
                trigger=Trigger(kind="manual"),
                due=T0 + timedelta(seconds=1),
            )
        )
        assert eng.runner.queued_count == 0  # no longer accepting


# -- a store that cannot write -------------------------------------------------------------


async def test_an_ending_the_store_refused_is_retried_and_recorded_once(eng: Engine) -> None:
    """An ending that finds the disk refusing writes is kept: the execution still counts
    for its task (overlap `skip` refuses a new run, `stop` says it waits for the store),
    its outcome is not told; once writes succeed it is recorded once, with the time it
    ended, and its outcome told once."""
    outcomes: list[Outcome] = []
    eng.events.on_ended(outcomes.append)
    task = await eng.create(params={"result": "all good"}, options={"max_retries": 2})
    execution_id = await submit(eng, task)
    [call] = await eng.gate.wait_calls(1)
    await DISK.refuse_writes(eng.store)
    eng.clock.advance(5)
    call.release.set()
    await call.wait_finished()
    await until(lambda: eng.runner.unrecorded_count == 1)
    eng.clock.advance(60)  # the retries record the time it ended, not their own
    assert eng.runner.running_for_task(task.id) == [execution_id]
    assert eng.runner.busy_with_task(task.id)
    with pytest.raises(ActionError, match="has ended \\(done\\) and waits for the store"):
        eng.runner.stop(execution_id)
    with pytest.raises(ActionError, match="overlap policy is 'skip'"):
        await eng.core.run(task.id)
    assert (await eng.store.get_execution(execution_id)).status is ExecutionStatus.RUNNING
    assert outcomes == []

    await DISK.restore(eng.store)
    await eng.finished(execution_id)
    done = await row(eng, execution_id)
    assert (done.status, done.status_msg, done.finished_at) == (
        ExecutionStatus.DONE,
        "all good",
        at(5),
    )
    assert [outcome.status for outcome in outcomes] == [ExecutionStatus.DONE]
    assert eng.runner.running_for_task(task.id) == []
    assert eng.runner.unrecorded_count == 0
    log = await eng.store.read_log(task.id)
    assert [entry.msg for entry in log] == ["done: all good"]


async def test_an_ending_recorded_late_is_not_run_again_after_a_restart(tmp_path: Path) -> None:
    """The finished command whose ending waited for the store is not marked interrupted
    (and retried) by the next start: it ran once, and stays done."""
    db_path = tmp_path / "taskd.db"
    async with open_engine(db_path, clock=FakeClock(T0)) as eng:
        task = await eng.create(options={"max_retries": 2, "retry_delay_sec": 1})
        execution_id = await submit(eng, task)
        [call] = await eng.gate.wait_calls(1)
        await DISK.refuse_writes(eng.store)
        with pytest.raises(StoreUnavailableError):
            await eng.store.ping()
        call.release.set()
        await until(lambda: eng.runner.unrecorded_count == 1)
        await DISK.restore(eng.store)
        await eng.finished(execution_id)
    async with open_engine(db_path, clock=FakeClock(at(60)), start=True) as eng:
        await eng.tick(at(61))
        await settle(eng.store)
        [execution] = await eng.executions(task.id)
        assert (execution.id, execution.status) == (execution_id, ExecutionStatus.DONE)
        assert eng.gate.calls == []


@pytest.mark.slow  # the shutdown gives the ending 5 s more to be recorded
async def test_an_ending_unrecorded_at_shutdown_is_recovered_by_the_next_start(
    tmp_path: Path,
) -> None:
    """An ending the store still refused when taskd stopped is not lost in a `running` row:
    the next start marks the execution `error` "interrupted" (the crash-recovery rule of
    the contract), the task no longer shows it running, and the retry policy applies (a
    retry is queued for a task with retries)."""
    db_path = tmp_path / "taskd.db"
    with capture_logs() as logged, contextlib.suppress(StoreUnavailableError):
        # The engine's teardown flushes its store, which still refuses writes: suppressed.
        async with open_engine(db_path, clock=FakeClock(T0), stop_grace_sec=0.05) as eng:
            task = await eng.create(options={"max_retries": 1, "retry_delay_sec": 1})
            execution_id = await submit(eng, task)
            [call] = await eng.gate.wait_calls(1)
            await DISK.refuse_writes(eng.store)
            call.release.set()
            await until(lambda: eng.runner.unrecorded_count == 1)
            await eng.runner.shutdown(0)  # the store still refuses: the ending is unrecorded
            execution = await eng.store.get_execution(execution_id)
            assert execution.status is ExecutionStatus.RUNNING
    # Its retries stopped with the shutdown: no traceback when the store closed under them.
    assert not [e for e in logged if e["event"] == "could not record the end of an execution"]
    assert [e["execution_id"] for e in logged if e["event"].startswith("taskd stops with")] == [
        execution_id
    ]
    async with open_engine(db_path, clock=FakeClock(at(60)), start=True) as eng:
        await settle(eng.store)
        ended = await eng.store.get_execution(execution_id)
        assert ended.status is ExecutionStatus.ERROR
        assert "interrupted" in (ended.status_msg or "")
        assert (await eng.task(task.id)).status is not TaskStatus.RUNNING
        await eng.tick(at(62))
        await settle(eng.store)
        first, retry = await eng.executions(task.id)  # the retry of the policy
        assert (first.id, first.status) == (execution_id, ExecutionStatus.ERROR)
        assert retry.trigger is TriggerKind.RETRY


async def test_a_start_the_store_refused_waits_queued_and_starts_later(eng: Engine) -> None:
    """Jobs whose start cannot be recorded stay in the runner's queue (their task busy) and
    start once the store takes writes again; none is lost or started unrecorded."""
    task = await eng.create(params={"auto": True})
    [execution_id] = await eng.store.add_executions(
        [NewExecution(task_id=task.id, trigger=TriggerKind.MANUAL, scheduled_for=T0)], T0
    )
    assert execution_id is not None
    await DISK.refuse_writes(eng.store)
    trigger = Trigger(kind=TriggerKind.MANUAL, scheduled_for=format_utc(T0))
    eng.runner.submit(Job(execution_id=execution_id, task=task, trigger=trigger, due=T0))
    await asyncio.sleep(0.05)
    assert eng.gate.calls == []
    assert eng.runner.busy_with_task(task.id)
    await DISK.restore(eng.store)
    await eng.gate.wait_calls(1)
    await eng.finished(execution_id)
    assert (await row(eng, execution_id)).status is ExecutionStatus.DONE

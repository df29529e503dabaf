"""The core's task operations over a real store, runner and scheduler, with a fake clock.

Definitions (create, update, delete, the config file's tasks) and actions (run, defer, pause,
resume, stop, force stop) are checked by what the store holds afterwards and by what the
`gate` module was called with. The scheduler's loop is off: `Engine.tick` starts what the
core enqueued.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_fixtures import (
    EVERY_15_MIN,
    QUARTER,
    T0,
    Engine,
    FakeClock,
    at,
    open_engine,
    settle,
    until,
)

from taskd.core import ConfigChanges
from taskd.errors import ActionError, ConflictError, DeferError, NotFoundError, ValidationError
from taskd.model import ExecutionStatus, TaskSource, TaskSpec, TaskStatus, TriggerKind
from taskd.store import NewExecution


def spec(eng: Engine, name: str = "job", **fields: Any) -> TaskSpec:
    """A validated gate task definition; `fields` as in an API body."""
    raw: dict[str, Any] = {"name": name, "task_module": "gate", **fields}
    return eng.core.validate(raw)


# -- definitions --------------------------------------------------------------------------


async def test_create_stores_version_1_and_the_first_due_time(eng: Engine) -> None:
    """create: version 1, source api, next_run_at from the schedules, status new."""
    task = await eng.core.create_task(spec(eng, schedules=EVERY_15_MIN), by="alice")
    stored = await eng.task(task.id)
    assert (stored.version, stored.source, stored.status) == (1, TaskSource.API, TaskStatus.NEW)
    assert stored.next_run_at == T0
    assert (stored.created_at, stored.created_by) == (at(-1), "alice")
    assert stored.spec["task_params"] == {}
    assert await eng.core.find("job") == stored
    assert await eng.core.find(str(task.id)) == stored
    with pytest.raises(NotFoundError):
        await eng.core.find("nope")


async def test_create_refuses_a_taken_name_and_bad_params(eng: Engine) -> None:
    """A taken name is a ConflictError; params the module refuses are a ValidationError."""
    await eng.core.create_task(spec(eng))
    with pytest.raises(ConflictError, match="exists already"):
        await eng.core.create_task(spec(eng))
    with pytest.raises(ValidationError) as refused:
        spec(eng, "other", task_params={"nope": 1})
    assert [error.path for error in refused.value.errors] == ["task_params.nope"]
    assert len(await eng.store.list_tasks()) == 1


async def test_update_bumps_the_version_and_checks_the_expected_one(eng: Engine) -> None:
    """update: version + 1; a stale expected_version is a ConflictError and changes nothing."""
    task = await eng.core.create_task(spec(eng, description="one"))
    updated = await eng.core.update_task(
        task.id, spec(eng, description="two"), expected_version=1, by="bob"
    )
    assert (updated.version, updated.spec["description"], updated.updated_by) == (2, "two", "bob")
    with pytest.raises(ConflictError, match="version 2"):
        await eng.core.update_task(task.id, spec(eng, description="three"), expected_version=1)
    stored = await eng.task(task.id)
    assert (stored.version, stored.spec["description"]) == (2, "two")
    with pytest.raises(NotFoundError):
        await eng.core.update_task(task.id + 1, spec(eng, "x"))


async def test_config_tasks_cannot_be_edited_or_deleted_through_the_api(eng: Engine) -> None:
    """A config-defined task refuses update and delete (naming the file) but may be run."""
    task = await eng.core.create_task(spec(eng, "nightly"), source=TaskSource.CONFIG)
    with pytest.raises(ConflictError, match=r"defined in etc/test\.toml"):
        await eng.core.update_task(task.id, spec(eng, "nightly", description="x"))
    with pytest.raises(ConflictError, match=r"defined in etc/test\.toml"):
        await eng.core.delete_task(task.id)
    stored = await eng.task(task.id)
    assert (stored.version, stored.spec["description"]) == (1, "")

    execution_id = await eng.core.run(task.id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.execution_id == execution_id


async def test_update_that_keeps_the_schedules_keeps_next_run_at(eng: Engine) -> None:
    """Editing params keeps the stored due time (even an overdue one); editing schedules
    recomputes it from now."""
    task = await eng.core.create_task(spec(eng, schedules=EVERY_15_MIN))
    await eng.tick(at(0))  # fires 10:00, next 10:15
    (await eng.gate.wait_calls(1))[0].release.set()
    await eng.drain()
    eng.clock.set(T0 + timedelta(minutes=20))

    kept = await eng.core.update_task(
        task.id, spec(eng, schedules=EVERY_15_MIN, task_params={"label": "new"})
    )
    assert kept.next_run_at == T0 + QUARTER  # overdue, still due: not skipped by the edit
    assert kept.version == 2

    moved = await eng.core.update_task(task.id, spec(eng, schedules=[{"interval_sec": 3600}]))
    assert moved.next_run_at == T0 + 4 * QUARTER  # 11:00, the first hourly slot after 10:20


async def test_delete_stops_running_executions(eng: Engine) -> None:
    """delete force-stops the task's running execution, then removes task and history."""
    task = await eng.core.create_task(spec(eng, task_params={"ignore_stop": True}))
    await eng.core.run(task.id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    await eng.core.delete_task(task.id)
    assert call.finished.is_set()
    assert call.ended == "cancelled"
    assert eng.runner.running_count == 0
    with pytest.raises(NotFoundError):
        await eng.task(task.id)
    assert await eng.store.list_executions(task.id) == []
    with pytest.raises(NotFoundError):
        await eng.core.delete_task(task.id)


async def test_delete_drops_runs_that_have_not_started(eng: Engine) -> None:
    """A run enqueued before the delete never starts once the task is gone."""
    task = await eng.core.create_task(spec(eng, task_params={"auto": True}))
    await eng.core.run(task.id)
    await eng.core.delete_task(task.id)
    await eng.tick()
    await eng.drain()
    assert eng.gate.calls == []


# -- run and deferred runs ----------------------------------------------------------------


async def test_run_starts_a_manual_execution_with_its_metadata(eng: Engine) -> None:
    """run: a `manual` execution now; the metadata reaches ctx.trigger.metadata and the row."""
    task = await eng.core.create_task(spec(eng, schedules=EVERY_15_MIN))
    metadata: Mapping[str, Any] = {"reason": "hotfix", "files": {"a": "b"}}
    execution_id = await eng.core.run(task.id, metadata)
    queued = await eng.store.get_execution(execution_id)
    assert (queued.status, queued.trigger, queued.slot_at) == (
        ExecutionStatus.QUEUED,
        TriggerKind.MANUAL,
        None,
    )
    assert queued.trigger_metadata == metadata
    assert queued.scheduled_for == at(-1)

    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    assert call.ctx.trigger.kind == "manual"
    assert call.ctx.trigger.metadata == metadata
    assert call.ctx.execution_id == execution_id
    assert (await eng.task(task.id)).next_run_at == T0  # the schedule is untouched
    call.release.set()
    await eng.drain()
    assert (await eng.store.get_execution(execution_id)).status is ExecutionStatus.DONE
    with pytest.raises(NotFoundError):
        await eng.core.run(task.id + 1)


async def test_run_is_refused_while_running_under_overlap_skip(eng: Engine) -> None:
    """run raises ActionError while the task runs with overlap=skip; parallel allows it."""
    skip = await eng.core.create_task(spec(eng, "skip"))
    parallel = await eng.core.create_task(spec(eng, "par", options={"overlap": "parallel"}))
    await eng.core.run(skip.id)
    await eng.core.run(parallel.id)
    await eng.tick()
    await eng.gate.wait_calls(2)

    with pytest.raises(ActionError, match="overlap policy is 'skip'"):
        await eng.core.run(skip.id)
    await eng.core.run(parallel.id)
    await eng.tick()
    await eng.gate.wait_calls(3)
    assert len(await eng.executions(skip.id)) == 1
    assert [str(e.status) for e in await eng.executions(parallel.id)] == ["running", "running"]


async def test_two_quick_runs_under_overlap_skip_start_once(eng: Engine) -> None:
    """A second run before the first has started is refused under overlap=skip."""
    task = await eng.core.create_task(spec(eng))
    await eng.core.run(task.id)
    with pytest.raises(ActionError):
        await eng.core.run(task.id)
    await eng.tick()
    await eng.gate.wait_calls(1)
    await settle(eng.store)
    assert len(eng.gate.calls) == 1


async def test_defer_run_then_run_defer_starts_once(eng: Engine) -> None:
    """defer_run returns an id; run_defer starts a `defer` execution with the metadata, once."""
    task = await eng.core.create_task(spec(eng, task_params={"auto": True}))
    defer_id = await eng.core.defer_run(task.id, {"ticket": 42})
    assert await eng.executions(task.id) == []

    execution_id = await eng.core.run_defer(defer_id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    await eng.drain()
    assert (call.ctx.trigger.kind, call.ctx.trigger.metadata) == ("defer", {"ticket": 42})
    [row] = await eng.executions(task.id)
    assert (row.id, row.trigger, row.status) == (execution_id, "defer", "done")
    assert row.trigger_metadata == {"ticket": 42}

    with pytest.raises(DeferError, match="used already"):
        await eng.core.run_defer(defer_id)
    with pytest.raises(DeferError, match="unknown"):
        await eng.core.run_defer("no-such-id")
    with pytest.raises(NotFoundError):
        await eng.core.defer_run(task.id + 1)
    assert len(eng.gate.calls) == 1


async def test_a_deferred_run_expires(eng: Engine) -> None:
    """run_defer after the defer's lifetime is refused."""
    task = await eng.core.create_task(spec(eng))
    defer_id = await eng.core.defer_run(task.id)
    eng.clock.advance(8 * 24 * 3600)
    with pytest.raises(DeferError, match="expired"):
        await eng.core.run_defer(defer_id)


# -- pause, resume, stop, force stop ------------------------------------------------------


async def test_actions_raise_when_nothing_runs(eng: Engine) -> None:
    """pause, resume, stop and force_stop raise ActionError when the task has no run."""
    task = await eng.core.create_task(spec(eng))
    for action in (eng.core.pause, eng.core.stop, eng.core.force_stop):
        with pytest.raises(ActionError, match="no running execution"):
            await action(task.id)
    with pytest.raises(ActionError, match="nothing to resume"):
        await eng.core.resume(task.id)
    for action in (eng.core.pause, eng.core.resume, eng.core.stop, eng.core.force_stop):
        with pytest.raises(NotFoundError):
            await action(task.id + 1)


async def test_pause_and_resume_a_running_task(eng: Engine) -> None:
    """pause holds the run at its checkpoint; a second pause and a resume of a running task
    are refused; resume lets it finish."""
    task = await eng.core.create_task(spec(eng))
    execution_id = await eng.core.run(task.id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    with pytest.raises(ActionError, match="running, not paused"):
        await eng.core.resume(task.id)

    assert await eng.core.pause(task.id) == [execution_id]
    with pytest.raises(ActionError, match="paused already"):
        await eng.core.pause(task.id)
    await settle(eng.store)
    assert (await eng.task(task.id)).status is TaskStatus.PAUSED
    call.release.set()
    assert await eng.core.resume(task.id) == [execution_id]
    await eng.finished(execution_id)
    assert call.checkpoint_passed.is_set()
    assert (await eng.store.get_execution(execution_id)).status is ExecutionStatus.DONE


async def test_stop_and_force_stop(eng: Engine) -> None:
    """stop ends a cooperative run canceled; force_stop cancels one that ignores stops."""
    polite = await eng.core.create_task(spec(eng, "polite"))
    stubborn = await eng.core.create_task(spec(eng, "stubborn", task_params={"ignore_stop": True}))
    polite_id = await eng.core.run(polite.id)
    stubborn_id = await eng.core.run(stubborn.id)
    await eng.tick()
    await eng.gate.wait_calls(2)

    assert await eng.core.stop(polite.id, "enough") == [polite_id]
    assert await eng.core.force_stop(stubborn.id) == [stubborn_id]
    await eng.finished(polite_id)
    await eng.finished(stubborn_id)
    assert [c.ended for c in eng.gate.calls] == ["stopped", "cancelled"]
    first = await eng.store.get_execution(polite_id)
    second = await eng.store.get_execution(stubborn_id)
    assert (first.status, first.status_msg) == (ExecutionStatus.CANCELED, "enough")
    assert (second.status, second.status_msg) == (ExecutionStatus.CANCELED, "force stopped")


async def test_resume_of_a_stopped_task_continues_from_its_saved_state(eng: Engine) -> None:
    """resume after a stop starts a `resume` execution that gets the saved state."""
    task = await eng.core.create_task(spec(eng, task_params={"save_state": {"cursor": 3}}))
    first_id = await eng.core.run(task.id)
    await eng.tick()
    await eng.gate.wait_calls(1)
    await eng.core.stop(task.id)
    await eng.finished(first_id)
    assert (await eng.task(task.id)).state == {"cursor": 3}

    [resumed_id] = await eng.core.resume(task.id)
    await eng.tick()
    _, call = await eng.gate.wait_calls(2)
    assert call.ctx.execution_id == resumed_id
    assert call.ctx.trigger.kind == "resume"
    assert call.ctx.state == {"cursor": 3}
    call.release.set()
    await eng.drain()
    rows = await eng.executions(task.id)
    assert [(r.trigger, r.status) for r in rows] == [
        (TriggerKind.MANUAL, ExecutionStatus.CANCELED),
        (TriggerKind.RESUME, ExecutionStatus.DONE),
    ]
    with pytest.raises(ActionError, match="nothing to resume"):
        await eng.core.resume(task.id)


@pytest.mark.slow
async def test_resume_with_the_sleep_module_skips_the_steps_done(eng: Engine) -> None:
    """The real sleep module, stopped after a step, resumes after that step."""
    task = await eng.core.create_task(
        eng.core.validate(
            {"name": "nap", "task_module": "sleep", "task_params": {"seconds": 0.3, "steps": 3}}
        )
    )
    first_id = await eng.core.run(task.id)
    await eng.tick()

    async def one_step_done() -> bool:
        return bool((await eng.store.get_execution(first_id)).progress)

    await until(one_step_done)
    await eng.core.stop(task.id)
    await eng.finished(first_id)
    stopped = await eng.store.get_execution(first_id)
    done_steps = (await eng.task(task.id)).state["done_steps"]  # type: ignore[index]
    assert done_steps >= 1
    assert (stopped.status, stopped.status_msg) == (
        ExecutionStatus.CANCELED,
        # The reason, then the module's word; one "stopped", not "stopped: stopped after".
        f"stopped after {done_steps} steps",
    )

    [resumed_id] = await eng.core.resume(task.id)
    await eng.tick()
    await until(lambda: eng.runner.is_active(resumed_id))
    await eng.finished(resumed_id)
    resumed = await eng.store.get_execution(resumed_id)
    assert (resumed.trigger, resumed.status) == (TriggerKind.RESUME, ExecutionStatus.DONE)
    messages = [e.msg for e in await eng.store.read_log(task.id, execution_id=resumed_id)]
    assert f"resuming after step {done_steps} of 3" in messages


async def test_resume_after_a_crash_continues_the_interrupted_run(tmp_path: Path) -> None:
    """After a crash, resume of an interrupted execution starts a `resume` run with the state."""
    db = tmp_path / "taskd.db"
    async with open_engine(db, clock=FakeClock(at(-1))) as dead:
        task = await dead.core.create_task(spec(dead, task_params={"auto": True}))
        [execution_id] = await dead.store.add_executions(
            [NewExecution(task_id=task.id, trigger=TriggerKind.MANUAL, scheduled_for=T0)], T0
        )
        assert execution_id is not None
        await dead.store.mark_started_many([(execution_id, task.id)], T0, "dead-host")
        await dead.store.save_state(task.id, {"page": 12})

    async with open_engine(db, clock=FakeClock(at(60)), start=True) as eng:
        await settle(eng.store)
        interrupted = await eng.store.get_execution(execution_id)
        assert (interrupted.status, interrupted.status_msg) == (
            ExecutionStatus.ERROR,
            "interrupted",
        )
        [resumed_id] = await eng.core.resume(task.id)
        [call] = await eng.gate.wait_calls(1)
        await eng.drain()
        assert (call.ctx.trigger.kind, call.ctx.state) == ("resume", {"page": 12})
        resumed = await eng.store.get_execution(resumed_id)
        assert (resumed.trigger, resumed.status) == (TriggerKind.RESUME, ExecutionStatus.DONE)


# -- the config file's tasks --------------------------------------------------------------


async def test_apply_config_adds_updates_retires_and_refuses(eng: Engine) -> None:
    """apply_config makes the config tasks match: add, update, retire (never delete); an
    API task's name is refused; applying the same specs again changes nothing."""
    api_task = await eng.core.create_task(spec(eng, "taken", description="mine"))
    changes = await eng.core.apply_config(
        [spec(eng, "alpha", schedules=EVERY_15_MIN), spec(eng, "beta"), spec(eng, "taken")]
    )
    assert changes == ConfigChanges(added=("alpha", "beta"), refused=("taken",))
    alpha = await eng.core.find("alpha")
    assert (alpha.source, alpha.version, alpha.next_run_at) == (TaskSource.CONFIG, 1, T0)
    assert alpha.created_by == "config"
    assert (await eng.task(api_task.id)).spec["description"] == "mine"

    again = await eng.core.apply_config(
        [spec(eng, "alpha", schedules=EVERY_15_MIN), spec(eng, "beta"), spec(eng, "taken")]
    )
    assert again == ConfigChanges(refused=("taken",))
    assert (await eng.core.find("alpha")).version == 1

    changes = await eng.core.apply_config(
        [
            spec(eng, "alpha", schedules=EVERY_15_MIN, description="edited"),
            spec(eng, "gamma"),
        ]
    )
    assert changes == ConfigChanges(added=("gamma",), updated=("alpha",), retired=("beta",))
    alpha = await eng.core.find("alpha")
    assert (alpha.version, alpha.spec["description"], alpha.next_run_at) == (2, "edited", T0)
    beta = await eng.core.find("beta")
    assert (beta.source, beta.enabled, beta.next_run_at) == (TaskSource.CONFIG, False, None)
    assert beta.retired_at == eng.clock.now()
    assert (await eng.core.find("taken")).source is TaskSource.API
    assert (
        await eng.core.apply_config(
            [spec(eng, "alpha", schedules=EVERY_15_MIN, description="edited"), spec(eng, "gamma")]
        )
        == ConfigChanges()
    ), "a retired task is retired once"


async def test_an_empty_config_retires_tasks_with_their_history(eng: Engine) -> None:
    """An empty (or truncated) file retires every config task: its id, executions and log
    stay; a retired task cannot run; the file naming it again brings it back with the
    same id, enabled and scheduled again."""
    await eng.core.apply_config([spec(eng, "nightly", schedules=EVERY_15_MIN)])
    task = await eng.core.find("nightly")
    execution_id = await eng.core.run(task.id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    call.release.set()
    await eng.drain()
    assert await eng.core.apply_config([]) == ConfigChanges(retired=("nightly",))
    retired = await eng.core.find("nightly")
    assert (retired.id, retired.retired_at, retired.enabled) == (task.id, eng.clock.now(), False)
    assert [e.id for e in await eng.core.list_executions(task.id)] == [execution_id]
    assert await eng.store.due_entry(task.id) is None
    with pytest.raises(ActionError, match="retired"):
        await eng.core.run(task.id)

    back = await eng.core.apply_config([spec(eng, "nightly", schedules=EVERY_15_MIN)])
    assert back == ConfigChanges(updated=("nightly",))
    restored = await eng.core.find("nightly")
    assert (restored.id, restored.retired_at, restored.enabled) == (task.id, None, True)
    assert restored.next_run_at == T0
    assert [e.id for e in await eng.core.list_executions(task.id)] == [execution_id]


async def test_retiring_a_running_task_lets_it_finish(eng: Engine) -> None:
    """A config task that leaves the file while it runs is retired; the run ends on its
    own and is recorded."""
    await eng.core.apply_config([spec(eng, "leaving")])
    task = await eng.core.find("leaving")
    execution_id = await eng.core.run(task.id)
    await eng.tick()
    [call] = await eng.gate.wait_calls(1)
    assert await eng.core.apply_config([]) == ConfigChanges(retired=("leaving",))
    assert eng.runner.running_for_task(task.id) == [execution_id]
    call.release.set()
    await eng.drain()
    assert (await eng.store.get_execution(execution_id)).status is ExecutionStatus.DONE
    assert (await eng.core.find("leaving")).retired_at is not None


async def test_only_a_retired_config_task_can_be_deleted(eng: Engine) -> None:
    """A config task in the file cannot be deleted (409 naming the file); once retired, a
    delete removes it with its history, for good."""
    await eng.core.apply_config([spec(eng, "old")])
    task = await eng.core.find("old")
    with pytest.raises(ConflictError, match="edit it there"):
        await eng.core.delete_task(task.id)
    await eng.core.apply_config([])
    await eng.core.delete_task(task.id)
    assert await eng.store.find_task("old") is None
    assert await eng.core.apply_config([]) == ConfigChanges()


async def test_a_v1_cancel_says_canceled_once(eng: Engine) -> None:
    """A stop whose reason is the status's own word ("canceled", as v1 `cancel` sends) does
    not repeat it: the status message and the log line read "canceled: stopped after N
    steps", never "canceled: canceled: ..."."""
    task = await eng.core.create_task(
        eng.core.validate(
            {"name": "nap", "task_module": "sleep", "task_params": {"seconds": 5, "steps": 50}}
        )
    )
    execution_id = await eng.core.run(task.id)
    await eng.tick()
    await until(lambda: eng.runner.is_active(execution_id) and eng.runner.running_count)
    await eng.core.stop(task.id, "canceled")
    await eng.finished(execution_id)
    ended = await eng.store.get_execution(execution_id)
    assert ended.status is ExecutionStatus.CANCELED
    assert ended.status_msg is not None
    assert ended.status_msg.startswith("canceled: stopped after ")
    await eng.store.flush()
    messages = [e.msg for e in await eng.store.read_log(task.id, limit=1000)]
    assert ended.status_msg in messages
    assert not [m for m in messages if "canceled: canceled" in m]


async def test_a_never_firing_schedule_stored_before_it_was_refused_breaks_nothing(
    eng: Engine,
) -> None:
    """A task stored with `0 0 30 2 *` (valid before "never fires" was refused) does not
    stop a change of the default timezone, nor the scheduler's tick."""
    eng.clock.set(T0)
    stored = await eng.store.insert_task(
        name="feb-30",
        source=TaskSource.API,
        spec={"task_module": "gate", "task_params": {}, "schedules": [{"cron": "0 0 30 2 *"}]},
        enabled=True,
        next_run_at=T0,
        now=T0,
    )
    eng.scheduler.task_changed(stored.id, stored)
    assert await eng.core.set_default_timezone("Europe/Berlin") == 0
    await eng.tick(T0)  # returns: the slot is planned with no schedule, not raised


async def test_a_new_default_timezone_moves_zoneless_schedules_only(eng: Engine) -> None:
    """Schedules without their own zone follow the daemon's current default (a SIGHUP that
    changes [daemon].timezone): their due time moves; a schedule naming its zone and an
    interval stay where they were."""
    eng.clock.set(T0)  # Monday 2026-01-05 10:00 UTC: Berlin is UTC+1
    zoneless = await eng.create("zoneless", schedules=[{"hours": [12], "minutes": [0]}])
    pinned = await eng.create(
        "pinned", schedules=[{"hours": [12], "minutes": [0], "timezone": "UTC"}]
    )
    interval = await eng.create("interval", schedules=[{"interval_sec": 3600}])
    assert "timezone" not in zoneless.spec["schedules"][0]
    before = {t.id: t.next_run_at for t in (zoneless, pinned, interval)}
    assert before[zoneless.id] == T0.replace(hour=12)

    assert await eng.core.set_default_timezone("Europe/Berlin") == 1
    after = {t: (await eng.task(t)).next_run_at for t in before}
    assert after[zoneless.id] == T0.replace(hour=11)  # 12:00 in Berlin
    assert after[pinned.id] == before[pinned.id]
    assert after[interval.id] == before[interval.id]
    assert eng.core.default_timezone == "Europe/Berlin"
    # The scheduler reads it the same way when it plans the slot after.
    await eng.tick(T0.replace(hour=11))
    assert (await eng.task(zoneless.id)).next_run_at == T0.replace(day=6, hour=11)

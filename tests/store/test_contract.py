"""The Store contract suite: every test runs against each implementation (`conftest.py`).

The Protocol's docstrings (`taskd/store/base.py`) are the contract. Tests talk to the store
only through the Protocol: what a write did is checked through the store's own reads (and,
for "committed", by closing and reopening it). Checks that look underneath, at the SQLite
file itself, live in `test_sqlite.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from disk_faults import BIG_TEXT, DiskFaults
from store_helpers import (
    SPEC,
    T0,
    StoreOpener,
    add_task,
    at,
    insert,
    queue,
    schedule_row,
    slot_claim,
    start,
)

from taskd.clock import to_micros
from taskd.errors import ConflictError, DeferError, NotFoundError, StoreUnavailableError
from taskd.model import (
    TASK_QUERY_FIELDS,
    ExecutionStatus,
    Task,
    TaskSource,
    TaskStatus,
    TriggerKind,
)
from taskd.store import (
    ClaimResult,
    Definition,
    NewExecution,
    SlotClaim,
    Store,
    TaskInsert,
    TaskUpdate,
)
from taskd.testing import wait_until

# ---------------------------------------------------------------------------------------
# opening, reopening, closing


async def test_reopening_keeps_data(store_opener: StoreOpener) -> None:
    """Data committed before closing is there, unchanged, after reopening."""
    async with store_opener() as store:
        task_id = await add_task(store, "kept", next_run_at=at(60))
        execution_id = await start(store, task_id)
        before = await store.get_task(task_id)
    async with store_opener() as store:
        assert await store.get_task(task_id) == before
        assert (await store.get_execution(execution_id)).status is ExecutionStatus.RUNNING


async def test_writes_after_closing_are_refused(store_opener: StoreOpener) -> None:
    """An awaited write on a closed store raises RuntimeError; a `*_nowait` one is dropped."""
    async with store_opener() as store:
        task_id = await add_task(store)
    with pytest.raises(RuntimeError):
        await store.ping()
    with pytest.raises(RuntimeError):
        await add_task(store, "late")
    store.log_nowait(task_id, None, "info", "dropped", T0)
    async with store_opener() as store:
        assert [t.name for t in await store.list_tasks()] == ["t"]
        assert await store.read_log(task_id) == []


async def test_an_execution_of_a_missing_task_is_refused_with_its_whole_call(
    store: Store,
) -> None:
    """add_executions naming an unknown task raises NotFoundError and inserts none of its rows."""
    task_id = await add_task(store)
    with pytest.raises(NotFoundError):
        await store.add_executions(
            [
                NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL),
                NewExecution(task_id=404, trigger=TriggerKind.MANUAL),
            ],
            T0,
        )
    assert await store.list_executions(task_id) == []
    assert await store.queued_executions() == []
    assert (await store.get_task(task_id)).status is TaskStatus.NEW


# ---------------------------------------------------------------------------------------
# tasks


async def test_insert_get_find(store: Store) -> None:
    """An inserted task is version 1, status new, and found by id and by name."""
    task = await store.insert_task(
        name="backup",
        source=TaskSource.CONFIG,
        spec=SPEC,
        enabled=False,
        next_run_at=at(30),
        now=T0,
        by="alice",
    )
    assert task.name == "backup"
    assert task.source is TaskSource.CONFIG
    assert task.spec == SPEC
    assert task.enabled is False
    assert task.next_run_at == at(30)
    assert task.status is TaskStatus.NEW
    assert task.version == 1
    assert task.created_at == task.updated_at == T0
    assert task.created_by == task.updated_by == "alice"
    assert task.state is None
    assert task.last_execution_id is None
    assert await store.get_task(task.id) == task
    assert await store.find_task("backup") == task
    assert await store.find_task("absent") is None


async def test_times_round_trip_as_utc_to_the_microsecond(store: Store) -> None:
    """Aware times in any zone come back as the same instant in UTC, microseconds kept."""
    berlin = datetime(2026, 3, 29, 3, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
    task = await store.get_task(await add_task(store, next_run_at=berlin, now=at(0.000001)))
    assert task.next_run_at == berlin
    assert task.next_run_at is not None
    assert task.next_run_at.tzinfo is UTC
    assert task.next_run_at.microsecond == 123456
    assert task.created_at == at(0.000001)


async def test_list_tasks_filters_by_source_and_pages(store: Store) -> None:
    """list_tasks orders by id, filters by source, honours limit and offset; count_tasks counts."""
    ids = [
        await add_task(store, f"t{i}", source=TaskSource.CONFIG if i % 3 == 0 else TaskSource.API)
        for i in range(10)
    ]
    assert [t.id for t in await store.list_tasks()] == ids
    assert [t.id for t in await store.list_tasks(source=TaskSource.CONFIG)] == ids[0::3]
    api_ids = [i for n, i in enumerate(ids) if n % 3 != 0]
    assert [t.id for t in await store.list_tasks(source=TaskSource.API)] == api_ids
    assert [t.id for t in await store.list_tasks(limit=3)] == ids[:3]
    assert [t.id for t in await store.list_tasks(limit=3, offset=8)] == ids[8:]
    assert [t.id for t in await store.list_tasks(offset=7)] == ids[7:]
    assert [t.id for t in await store.list_tasks(source=TaskSource.API, limit=2, offset=1)] == (
        api_ids[1:3]
    )
    assert await store.count_tasks() == 10


async def test_update_bumps_version(store: Store) -> None:
    """update_task replaces the definition, bumps the version and keeps the creation data."""
    task_id = await add_task(store, "u", by="alice")
    new_spec = {"task_module": "shell", "task_params": {"argv": ["true"]}}
    updated = await store.update_task(
        task_id, spec=new_spec, enabled=False, next_run_at=at(5), now=at(1), by="bob"
    )
    assert updated.version == 2
    assert updated.spec == new_spec
    assert updated.enabled is False
    assert updated.next_run_at == at(5)
    assert updated.updated_at == at(1)
    assert updated.updated_by == "bob"
    assert updated.created_at == T0
    assert updated.created_by == "alice"
    assert updated.name == "u"
    renamed = await store.update_task(
        task_id,
        spec=new_spec,
        enabled=True,
        next_run_at=None,
        now=at(2),
        name="v",
        expected_version=2,
    )
    assert renamed.version == 3
    assert renamed.name == "v"
    assert await store.find_task("u") is None


async def test_update_with_stale_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    """A mismatched expected_version raises ConflictError and leaves the task as it was."""
    task_id = await add_task(store, "v")
    await store.update_task(task_id, spec=SPEC, enabled=True, next_run_at=None, now=at(1))
    before = await store.get_task(task_id)
    assert before.version == 2
    for stale in (1, 3):
        with pytest.raises(ConflictError):
            await store.update_task(
                task_id,
                spec={"task_module": "shell"},
                enabled=False,
                next_run_at=at(9),
                now=at(2),
                expected_version=stale,
            )
    assert await store.get_task(task_id) == before


async def test_update_to_a_taken_name_is_a_conflict_and_changes_nothing(store: Store) -> None:
    """Renaming a task to another task's name raises ConflictError; neither task changes."""
    a = await store.get_task(await add_task(store, "a"))
    b = await store.get_task(await add_task(store, "b"))
    with pytest.raises(ConflictError):
        await store.update_task(
            b.id, spec={"task_module": "x"}, enabled=False, next_run_at=None, now=at(1), name="a"
        )
    assert await store.get_task(a.id) == a
    assert await store.get_task(b.id) == b


def _definition(name: str, **spec: Any) -> Definition:
    return Definition(name=name, spec={**SPEC, **spec}, enabled=True, next_run_at=None)


async def test_write_tasks_inserts_and_updates_in_order(store: Store) -> None:
    """write_tasks inserts and updates in one call and returns the tasks as committed, in
    order; an update's `build` gets the stored task; None leaves a task as it is."""
    a = await store.get_task(await add_task(store, "a"))
    b = await store.get_task(await add_task(store, "b"))
    seen: list[Task] = []

    def rename(stored: Task) -> Definition:
        seen.append(stored)
        return _definition("a2", task_timeout_sec=5)

    saved = await store.write_tasks(
        [
            TaskInsert(source=TaskSource.API, definition=_definition("c")),
            TaskUpdate(task_id=a.id, build=rename),
            TaskUpdate(task_id=b.id, build=lambda stored: None),
        ],
        now=at(1),
        by="bob",
    )
    assert seen == [a]
    assert [(t.name, t.version, t.updated_by) for t in saved] == [
        ("c", 1, "bob"),
        ("a2", 2, "bob"),
        ("b", 1, None),
    ]
    assert saved[1].spec["task_timeout_sec"] == 5
    assert saved == [await store.get_task(t.id) for t in saved]


@pytest.mark.parametrize("failing", ["taken name", "name twice", "unknown id", "build raises"])
async def test_write_tasks_is_all_or_nothing(store: Store, failing: str) -> None:
    """One refused write in a write_tasks call (a taken name, a name given twice, an
    unknown id, a `build` that raises) refuses the call: nothing of it is written."""
    a = await store.get_task(await add_task(store, "a"))

    def refuse(stored: Task) -> Definition:
        raise ConflictError("no")

    last: TaskInsert | TaskUpdate = {
        "taken name": TaskInsert(source=TaskSource.API, definition=_definition("a")),
        "name twice": TaskInsert(source=TaskSource.API, definition=_definition("new")),
        "unknown id": TaskUpdate(task_id=404, build=lambda stored: _definition("x")),
        "build raises": TaskUpdate(task_id=a.id, build=refuse),
    }[failing]
    with pytest.raises(NotFoundError if failing == "unknown id" else ConflictError):
        await store.write_tasks(
            [
                TaskInsert(source=TaskSource.API, definition=_definition("new")),
                TaskUpdate(task_id=a.id, build=lambda stored: _definition("a", x=1)),
                last,
            ],
            now=at(1),
        )
    assert [t.name for t in await store.list_tasks()] == ["a"]
    assert await store.get_task(a.id) == a


async def test_unknown_task_id_is_not_found(store: Store) -> None:
    """get, update and delete of an unknown id raise NotFoundError."""
    with pytest.raises(NotFoundError):
        await store.get_task(404)
    with pytest.raises(NotFoundError):
        await store.update_task(404, spec=SPEC, enabled=True, next_run_at=None, now=T0)
    with pytest.raises(NotFoundError):
        await store.delete_task(404)
    assert await store.count_tasks() == 0


async def test_get_tasks_many_ids_across_chunks(store: Store) -> None:
    """get_tasks returns every existing task among more than 500 ids, and skips unknown ids."""
    tasks = await asyncio.gather(*(insert(store, f"m{i}") for i in range(1203)))
    ids = [task.id for task in tasks]
    found = await store.get_tasks([*ids, 999_999, -1])
    assert found == {task.id: task for task in tasks}
    assert await store.get_tasks([]) == {}


async def test_due_index_lists_enabled_scheduled_tasks_only(store: Store) -> None:
    """due_index and due_entry list enabled tasks with a next_run_at, in microseconds."""
    due = await add_task(store, "due", next_run_at=at(10))
    unscheduled = await add_task(store, "unscheduled", next_run_at=None)
    disabled = await add_task(store, "disabled", enabled=False, next_run_at=at(20))
    assert await store.due_index() == [(to_micros(at(10)), due)]
    assert await store.due_entry(due) == (to_micros(at(10)), due)
    assert await store.due_entry(unscheduled) is None
    assert await store.due_entry(disabled) is None
    await store.set_next_run_at(due, at(11))
    await store.set_next_run_at(unscheduled, at(5))
    assert sorted(await store.due_index()) == [
        (to_micros(at(5)), unscheduled),
        (to_micros(at(11)), due),
    ]
    assert (await store.get_task(due)).version == 1  # the server's own update: no bump


async def test_save_state_round_trip(store_opener: StoreOpener) -> None:
    """save_state stores JSON that get_task returns, across a reopen; None clears it."""
    state = {"cursor": 17, "done": ["a", "b"], "nested": {"x": 1.5, "ok": True, "none": None}}
    async with store_opener() as store:
        task_id = await add_task(store, "s")
        await store.save_state(task_id, state)
        assert (await store.get_task(task_id)).state == state
    async with store_opener() as store:
        assert (await store.get_task(task_id)).state == state
        await store.save_state(task_id, None)
        assert (await store.get_task(task_id)).state is None


async def test_duplicate_name_is_a_conflict_and_changes_nothing(store: Store) -> None:
    """Inserting a taken name raises ConflictError; the stored task and the count stay."""
    first = await store.insert_task(
        name="dup", source=TaskSource.API, spec=SPEC, enabled=True, next_run_at=None, now=T0
    )
    with pytest.raises(ConflictError, match="dup"):
        await store.insert_task(
            name="dup",
            source=TaskSource.CONFIG,
            spec={"task_module": "shell"},
            enabled=False,
            next_run_at=at(1),
            now=at(1),
        )
    assert await store.get_task(first.id) == first
    assert await store.count_tasks() == 1
    assert await store.list_tasks() == [first]


async def test_delete_removes_executions_log_and_defers(store: Store) -> None:
    """Deleting a task removes its executions, log entries and deferred runs, nothing else."""
    doomed, kept = await add_task(store, "doomed"), await add_task(store, "kept")
    runs, defers = {}, {}
    for task_id in (doomed, kept):
        runs[task_id] = await start(store, task_id)
        store.log_nowait(task_id, runs[task_id], "info", "hello", T0)
        store.log_nowait(task_id, None, "info", "task-level", T0)
        defers[task_id] = await store.create_defer(task_id, {"k": 1}, T0, at(3600))
    await store.flush()
    await store.delete_task(doomed)
    with pytest.raises(NotFoundError):
        await store.get_task(doomed)
    with pytest.raises(NotFoundError):
        await store.get_execution(runs[doomed])
    assert await store.list_executions(doomed) == []
    assert await store.read_log(doomed) == []
    with pytest.raises(DeferError):
        await store.use_defer(defers[doomed], at(1))
    assert [t.id for t in await store.list_tasks()] == [kept]
    assert [e.id for e in await store.list_executions(kept)] == [runs[kept]]
    assert [e.msg for e in await store.read_log(kept)] == ["hello", "task-level"]
    assert await store.use_defer(defers[kept], at(1)) == (kept, {"k": 1})


async def test_server_updates_of_an_unknown_task_change_nothing(store: Store) -> None:
    """set_next_run_at and save_state of an unknown id neither raise nor create a task."""
    await store.set_next_run_at(404, at(1))
    await store.save_state(404, {"n": 1})
    assert await store.count_tasks() == 0
    assert await store.due_index() == []


async def test_get_task_with_last_execution(store: Store) -> None:
    """It returns None for an unknown id, (task, None) before any run, then the last run."""
    assert await store.get_task_with_last_execution(404) is None
    task_id = await add_task(store)
    assert await store.get_task_with_last_execution(task_id) == (
        await store.get_task(task_id),
        None,
    )
    first = await start(store, task_id)
    await store.finish(first, task_id, ExecutionStatus.DONE, "fine", at(1))
    second = await start(store, task_id, at(2))
    found = await store.get_task_with_last_execution(task_id)
    assert found is not None
    task, last = found
    assert task == await store.get_task(task_id)
    assert task.last_execution_id == second
    assert last == await store.get_execution(second)


async def test_query_tasks_filters_orders_pages_and_counts(store: Store) -> None:
    """query_tasks applies every condition, sorts by the fields then id, pages, and counts."""
    specs = {
        "alpha": {"task_module": "sleep", "options": {"priority": 5}},
        "beta": {"task_module": "shell", "workflow_type": "copy", "options": {"priority": 1}},
        "gamma": {"task_module": "sleep", "workflow_type": "copy"},
        "delta": {"task_module": "http", "workflow_action": "sync", "options": {"priority": 5}},
    }
    ids = {
        name: await add_task(store, name, spec=spec, next_run_at=at(n * 10), now=at(n))
        for n, (name, spec) in enumerate(specs.items())
    }
    await start(store, ids["gamma"])

    async def names(**kwargs: Any) -> tuple[list[str], int]:
        tasks, total = await store.query_tasks(**kwargs)
        return [t.name for t in tasks], total

    assert await names() == (["alpha", "beta", "gamma", "delta"], 4)
    assert await names(where=[("task_module", "=", "sleep")]) == (["alpha", "gamma"], 2)
    assert await names(where=[("workflow_type", "=", "copy"), ("name", "!=", "beta")]) == (
        ["gamma"],
        1,
    )
    assert await names(where=[("name", "like", "%mm%")]) == (["gamma"], 1)
    assert await names(where=[("name", "like", "_e%")]) == (["beta", "delta"], 2)
    assert await names(where=[("id", "in", [ids["beta"], ids["delta"], 999])]) == (
        ["beta", "delta"],
        2,
    )
    assert await names(where=[("status", "=", "running")]) == (["gamma"], 1)
    assert await names(where=[("next_run_at", ">=", at(10)), ("next_run_at", "<", at(30))]) == (
        ["beta", "gamma"],
        2,
    )
    assert await names(where=[("created_at", "<=", at(1))]) == (["alpha", "beta"], 2)
    assert await names(where=[("workflow_action", "=", "sync")]) == (["delta"], 1)
    # Unset priority counts as 0; ties are broken by id.
    assert await names(order=[("priority", True)]) == (["alpha", "delta", "beta", "gamma"], 4)
    assert await names(order=[("priority", False), ("name", True)]) == (
        ["gamma", "beta", "delta", "alpha"],
        4,
    )
    assert await names(where=[("priority", ">", 0)], order=[("name", False)], limit=2) == (
        ["alpha", "beta"],
        3,
    )
    assert await names(order=[("name", False)], limit=2, offset=3) == (["gamma"], 4)
    tasks, total = await store.query_tasks(limit=1, with_total=False)
    assert ([t.name for t in tasks], total) == (["alpha"], -1)


async def test_query_tasks_sorts_empty_values_after_the_others(store: Store) -> None:
    """A task without a next run comes after those with one ascending, before them descending."""
    await add_task(store, "manual", next_run_at=None)
    await add_task(store, "late", next_run_at=at(20))
    await add_task(store, "soon", next_run_at=at(10))
    for descending, expected in (
        (False, ["soon", "late", "manual"]),
        (True, ["manual", "late", "soon"]),
    ):
        tasks, _ = await store.query_tasks(order=[("next_run_at", descending)])
        assert [t.name for t in tasks] == expected


async def test_query_tasks_owner_keeps_its_own_api_tasks_and_the_config_tasks(
    store: Store,
) -> None:
    """`owner`: the API tasks it created (an update by someone else does not change the
    owner), every config task, ANDed with `where`, counted and paged; None: every task."""
    ids = {
        name: await add_task(store, name, by=by, source=source)
        for name, by, source in [
            ("a1", "alice", TaskSource.API),
            ("b1", "bob", TaskSource.API),
            ("a2", "alice", TaskSource.API),
            ("c1", "config", TaskSource.CONFIG),
            ("nobody", None, TaskSource.API),
            # An API task created by a principal named "config" is that principal's only.
            ("k1", "config", TaskSource.API),
        ]
    }
    await store.update_task(
        ids["a2"], spec=SPEC, enabled=True, next_run_at=None, now=at(1), by="bob"
    )

    async def names(**kwargs: Any) -> tuple[list[str], int]:
        tasks, total = await store.query_tasks(**kwargs)
        return [t.name for t in tasks], total

    assert await names(owner="alice") == (["a1", "a2", "c1"], 3)
    assert await names(owner="bob") == (["b1", "c1"], 2)
    assert await names(owner="carol") == (["c1"], 1)
    assert await names(owner="config") == (["c1", "k1"], 2)
    assert await names(owner="alice", where=[("name", "like", "a%")]) == (["a1", "a2"], 2)
    assert await names(owner="alice", limit=1, offset=1, order=[("name", True)]) == (["a2"], 3)
    assert (await names())[1] == 6
    tasks, total = await store.query_tasks(owner="alice", with_total=False)
    assert (len(tasks), total) == (3, -1)


async def test_query_tasks_by_the_types_of_sources_and_destinations(store: Store) -> None:
    """`sources.type` / `destinations.type` are `,type,...,` of the objects in
    `task_params.sources` (a list) and `task_params.destination` (an object or a list);
    a task without them, or with other shapes, matches no `like '%,x,%'`."""

    def place(kind: str) -> dict[str, str]:
        return {"type": kind, "path": "/data"}

    specs = {
        "one": {"sources": [place("local")], "destination": place("local")},
        "two": {"sources": [place("local"), place("s3")], "destination": [place("tape")]},
        "odd": {"sources": "local", "destination": ["local", 3]},
        "none": {},
    }
    for name, params in specs.items():
        await add_task(store, name, spec={"task_module": "files", "task_params": params})

    async def names(field: str, kind: str) -> list[str]:
        tasks, total = await store.query_tasks(where=[(field, "like", f"%,{kind},%")])
        assert total == len(tasks)
        return [t.name for t in tasks]

    assert await names("sources.type", "local") == ["one", "two"]
    assert await names("sources.type", "s3") == ["two"]
    assert await names("sources.type", "tape") == []
    assert await names("destinations.type", "local") == ["one"]
    assert await names("destinations.type", "tape") == ["two"]


async def test_query_tasks_accepts_every_query_field(store: Store) -> None:
    """Each of model.TASK_QUERY_FIELDS can be filtered and sorted on."""
    await add_task(store, "one", next_run_at=at(1))
    for name in sorted(TASK_QUERY_FIELDS):
        tasks, total = await store.query_tasks(
            where=[(name, "in", [])], order=[(name, True), (name, False)]
        )
        assert (tasks, total) == ([], 0), name
        tasks, total = await store.query_tasks(order=[(name, True)])
        assert total == len(tasks) == 1, name


async def test_query_tasks_refuses_unknown_fields_and_operators(store: Store) -> None:
    """An unknown field (in `where` or `order`) or operator raises ValueError."""
    await add_task(store)
    with pytest.raises(ValueError, match="spec"):
        await store.query_tasks(where=[("spec", "=", "x")])
    with pytest.raises(ValueError, match="spec"):
        await store.query_tasks(order=[("spec", False)])
    with pytest.raises(ValueError, match="~"):
        await store.query_tasks(where=[("name", "~", "x")])


# ---------------------------------------------------------------------------------------
# durability


async def test_flush_with_nothing_pending_returns(store: Store) -> None:
    """flush() on an idle store returns at once."""
    async with asyncio.timeout(1):
        await store.flush()


async def test_nowait_writes_are_visible_after_flush(store: Store) -> None:
    """log/progress/status `*_nowait` writes can be read back once flush() returns."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    store.log_nowait(task_id, execution_id, "info", "one", at(1))
    store.progress_nowait(execution_id, task_id, {"progress": 50.0})
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    await store.flush()
    assert [e.msg for e in await store.read_log(task_id)] == ["one"]
    execution = await store.get_execution(execution_id)
    assert (execution.progress, execution.status) == (50.0, ExecutionStatus.PAUSED)
    task = await store.get_task(task_id)
    assert (task.status_percent, task.status) == (50.0, TaskStatus.PAUSED)


async def test_closing_commits_pending_nowait_writes(store_opener: StoreOpener) -> None:
    """Leaving the store's context commits `*_nowait` writes still pending."""
    async with store_opener() as store:
        task_id = await add_task(store)
        store.log_nowait(task_id, None, "info", "last words", T0)
    async with store_opener() as store:
        assert [e.msg for e in await store.read_log(task_id)] == ["last words"]


@pytest.mark.slow
async def test_flush_returns_while_writes_of_others_keep_coming(store: Store) -> None:
    """flush() returns once earlier writes committed, even if new writes keep arriving."""
    chatty, quiet = await add_task(store, "chatty"), await add_task(store, "quiet")

    async def chatter() -> None:
        for n in range(20_000):
            store.log_nowait(chatty, None, "debug", f"chatter {n}", T0)
            await asyncio.sleep(0)

    producer = asyncio.create_task(chatter())
    try:
        await asyncio.sleep(0)
        store.log_nowait(quiet, None, "info", "marker", T0)
        await store.flush()
        assert [e.msg for e in await store.read_log(quiet)] == ["marker"]
        assert not producer.done(), "flush() returned only after the stream of writes ended"
    finally:
        await producer


async def test_a_refused_write_fails_alone_among_concurrent_ones(store: Store) -> None:
    """Refused writes submitted together with good ones raise; the good ones commit."""
    original = await store.get_task(await add_task(store, "taken"))
    other = await add_task(store, "other")
    names = [f"g{i}" for i in range(25)] + ["taken"] + [f"g{i}" for i in range(25, 50)]
    results = await asyncio.gather(
        *(insert(store, name, spec={"n": name}, now=at(1)) for name in names),
        store.update_task(
            other, spec=SPEC, enabled=True, next_run_at=None, now=at(1), expected_version=7
        ),
        store.delete_task(404),
        return_exceptions=True,
    )
    errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert sorted(errors) == [25, 51, 52]
    assert isinstance(errors[25], ConflictError)
    assert isinstance(errors[51], ConflictError)
    assert isinstance(errors[52], NotFoundError)
    assert await store.get_task(original.id) == original
    assert (await store.get_task(other)).version == 1
    committed = {task.name for task in await store.list_tasks()}
    assert committed == {"taken", "other", *(f"g{i}" for i in range(50))}


async def test_commits_are_counted_and_reported(store: Store) -> None:
    """batches_written grows with each commit; on_batch gets each one's seconds and writes."""
    reported: list[tuple[float, int]] = []
    store.on_batch = lambda seconds, writes: reported.append((seconds, writes))
    before = store.batches_written
    await asyncio.gather(*(insert(store, f"b{i}") for i in range(20)))
    await store.ping()
    assert store.batches_written - before == len(reported) >= 2
    assert sum(writes for _, writes in reported) == 21
    assert all(seconds >= 0 for seconds, _ in reported)


# ---------------------------------------------------------------------------------------
# a full or read-only disk


async def test_a_write_on_a_full_disk_raises_store_unavailable_and_changes_nothing(
    store: Store, disk: DiskFaults
) -> None:
    """A write that finds no space raises StoreUnavailableError with the reason; it wrote
    nothing; the store remembers the failure (ping raises it, though an empty write commits)
    until a write succeeds after space returned."""
    await add_task(store, "small")
    assert store.failure is None
    await disk.fill(store)
    with pytest.raises(StoreUnavailableError, match="full") as raised:
        await insert(store, "big", spec={**SPEC, "description": BIG_TEXT})
    assert "full" in raised.value.reason
    assert await store.find_task("big") is None
    assert store.failure == raised.value.reason
    with pytest.raises(StoreUnavailableError, match="full"):
        await store.ping()
    await store.flush()  # an empty write neither raises nor clears the failure
    assert store.failure is not None
    await disk.restore(store)
    await insert(store, "big", spec={**SPEC, "description": BIG_TEXT})
    assert store.failure is None
    await store.ping()


async def test_ping_clears_a_remembered_failure_once_writes_succeed_again(
    store: Store, disk: DiskFaults
) -> None:
    """While the disk is full, ping keeps raising (its probe needs room); once space
    returns, ping alone clears the failure: an idle daemon's health recovers."""
    await add_task(store, "small")
    await disk.fill(store)
    with pytest.raises(StoreUnavailableError, match="full"):
        await insert(store, "big", spec={**SPEC, "description": BIG_TEXT})
    for _ in range(2):
        with pytest.raises(StoreUnavailableError, match="full"):
            await store.ping()
    assert store.failure is not None
    await disk.restore(store)
    await store.ping()
    assert store.failure is None
    assert [task.name for task in await store.list_tasks()] == ["small"]  # left nothing


@pytest.mark.slow
async def test_an_awaited_write_on_a_frozen_store_times_out_and_is_withdrawn(
    store_opener: StoreOpener, disk: DiskFaults
) -> None:
    """On a frozen file system an awaited write raises StoreUnavailableError after the
    write timeout instead of hanging; one the store had not begun is withdrawn (never
    written, even after the thaw); the failure is remembered until a ping commits."""
    async with store_opener(write_timeout_sec=0.3) as store:
        await add_task(store, "before")
        await disk.freeze(store)
        try:
            with pytest.raises(StoreUnavailableError, match="nothing was written") as raised:
                await insert(store, "frozen")
            assert "within 0.3 s" in raised.value.reason
            assert store.failure is not None
            with pytest.raises(StoreUnavailableError):
                await store.ping()
        finally:
            await disk.thaw(store)
        await store.ping()
        assert store.failure is None
        await insert(store, "after")
    async with store_opener() as reopened:
        assert sorted(t.name for t in await reopened.list_tasks()) == ["after", "before"]


async def test_every_kind_of_write_raises_store_unavailable_when_writes_are_refused(
    store: Store, disk: DiskFaults
) -> None:
    """With the file system refusing writes, awaited writes raise StoreUnavailableError
    (not a backend error) and change nothing; reads keep working."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await disk.refuse_writes(store)
    attempts = [
        insert(store, "other"),
        store.save_state(task_id, {"step": 1}),
        store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(1)),
        store.add_executions([NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL)], T0),
        store.delete_task(task_id),
    ]
    for attempt in attempts:
        with pytest.raises(StoreUnavailableError, match="readonly"):
            await attempt
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.RUNNING
    assert [task.name for task in await store.list_tasks()] == ["t"]


async def test_a_failed_ending_tried_again_after_space_returns_is_recorded(
    store: Store, disk: DiskFaults
) -> None:
    """`finish` that raised StoreUnavailableError left the execution running; the same call
    after space returned records the ending, with the task, as if it had never failed."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await disk.refuse_writes(store)
    with pytest.raises(StoreUnavailableError):
        await store.finish(execution_id, task_id, ExecutionStatus.DONE, "ok", at(5))
    assert (await store.get_task(task_id)).status is TaskStatus.RUNNING
    await disk.restore(store)
    await store.finish(execution_id, task_id, ExecutionStatus.DONE, "ok", at(5))
    execution = await store.get_execution(execution_id)
    assert (execution.status, execution.status_msg, execution.finished_at) == (
        ExecutionStatus.DONE,
        "ok",
        at(5),
    )
    assert (await store.get_task(task_id)).status is TaskStatus.DONE


async def test_nowait_writes_that_failed_are_held_and_land_in_order_when_space_returns(
    store: Store, disk: DiskFaults
) -> None:
    """Log lines, progress and pause state queued while writes fail are not lost: they are
    retried and commit, in their order, once the disk takes writes again (no other write
    needed to carry them)."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await disk.refuse_writes(store)
    for n in range(5):
        store.log_nowait(task_id, execution_id, "info", f"line {n}", at(n))
    store.progress_nowait(execution_id, task_id, {"progress": 40.0})
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    with contextlib.suppress(StoreUnavailableError):
        await store.flush()  # raises if no transaction can begin, as here
    assert await store.read_log(task_id) == []
    assert store.failure is not None
    await disk.restore(store)

    async def landed() -> bool:
        return len(await store.read_log(task_id)) == 5

    await wait_until(landed, timeout_sec=3)
    assert [entry.msg for entry in await store.read_log(task_id)] == [f"line {n}" for n in range(5)]
    assert [entry.idx for entry in await store.read_log(task_id)] == list(range(5))
    execution = await store.get_execution(execution_id)
    assert (execution.progress, execution.status) == (40.0, ExecutionStatus.PAUSED)
    assert store.failure is None
    assert store.writes_dropped == 0


async def test_held_log_lines_keep_their_place_before_lines_logged_after_the_failure(
    store: Store, disk: DiskFaults
) -> None:
    """Lines held by a failure are committed ahead of the lines logged once writes succeed
    again: a task's log reads in the order it was written."""
    task_id = await add_task(store)
    await disk.refuse_writes(store)
    for n in range(3):
        store.log_nowait(task_id, None, "info", f"held {n}", T0)
    with contextlib.suppress(StoreUnavailableError):
        await store.flush()
    await disk.restore(store)
    store.log_nowait(task_id, None, "info", "after", T0)
    await store.flush()
    log = await store.read_log(task_id)
    assert [(entry.idx, entry.msg) for entry in log] == [
        (0, "held 0"),
        (1, "held 1"),
        (2, "held 2"),
        (3, "after"),
    ]


async def test_held_log_lines_leave_the_backlog_count_once(store: Store, disk: DiskFaults) -> None:
    """A log line held by a failure counts off the log backlog once: after space returns
    and everything is committed, `log_pending` is back to 0 (not below) and `log_full`
    is False."""
    task_id = await add_task(store)
    await disk.refuse_writes(store)
    for n in range(5):
        store.log_nowait(task_id, None, "info", f"held {n}", T0)
    with contextlib.suppress(StoreUnavailableError):
        await store.flush()
    await disk.restore(store)
    store.log_nowait(task_id, None, "info", "after", T0)
    await store.flush()
    await store.flush()
    assert store.log_pending == 0
    assert not store.log_full
    assert len(await store.read_log(task_id)) == 6


async def test_closing_commits_held_writes_once_space_returned(
    store_opener: StoreOpener, disk: DiskFaults
) -> None:
    """Writes held after a failure are committed by closing, when the disk takes them."""
    async with store_opener() as store:
        task_id = await add_task(store)
        await disk.refuse_writes(store)
        store.log_nowait(task_id, None, "info", "kept", T0)
        with contextlib.suppress(StoreUnavailableError):
            await store.flush()
        await disk.restore(store)
    async with store_opener() as store:
        assert [e.msg for e in await store.read_log(task_id)] == ["kept"]


# ---------------------------------------------------------------------------------------
# claims


async def test_claim_advances_next_run_at_and_queues_the_slot(store: Store) -> None:
    """A matching claim sets next_run_at, inserts its rows and makes the task queued."""
    task_id = await add_task(store, next_run_at=at(60))
    row = NewExecution(
        task_id=task_id,
        trigger=TriggerKind.SCHEDULE,
        slot_at=at(60),
        scheduled_for=at(60),
        trigger_metadata={"why": "slot"},
    )
    claim = SlotClaim(
        task_id=task_id, expected_next_run_at=at(60), next_run_at=at(120), executions=(row,)
    )
    [result] = await store.claim([claim], at(59.9))
    assert result.applied
    [execution_id] = result.execution_ids
    assert execution_id is not None
    task = await store.get_task(task_id)
    assert task.next_run_at == at(120)
    assert task.status is TaskStatus.QUEUED
    execution = await store.get_execution(execution_id)
    assert execution.status is ExecutionStatus.QUEUED
    assert execution.trigger is TriggerKind.SCHEDULE
    assert execution.slot_at == execution.scheduled_for == at(60)
    assert execution.queued_at == at(59.9)
    assert execution.trigger_metadata == {"why": "slot"}
    assert execution.started_at is None
    assert execution.finished_at is None


async def test_claims_are_independent_within_one_call(store: Store) -> None:
    """Each claim of one call is applied or refused on its own."""
    a = await add_task(store, "a", next_run_at=at(10))
    b = await add_task(store, "b", next_run_at=at(10))
    results = await store.claim([slot_claim(a, at(10), at(20)), slot_claim(b, at(5), at(20))], T0)
    assert results == [ClaimResult(True, ()), ClaimResult(False)]
    assert (await store.get_task(a)).next_run_at == at(20)
    assert (await store.get_task(b)).next_run_at == at(10)


async def test_rows_without_slot_are_never_deduplicated(store: Store) -> None:
    """Manual runs and retries (slot_at None) may be added any number of times."""
    task_id = await add_task(store)
    rows = [NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL) for _ in range(3)]
    ids = await store.add_executions(rows, T0)
    assert None not in ids
    assert len(set(ids)) == 3


async def test_queued_rows_make_the_task_queued_but_skipped_rows_do_not(store: Store) -> None:
    """Only queued rows make a task `queued`; a `skipped` row leaves its status alone."""
    task_id = await add_task(store, next_run_at=at(60))
    [skipped] = await store.add_executions(
        [
            NewExecution(
                task_id=task_id,
                trigger=TriggerKind.SCHEDULE,
                status=ExecutionStatus.SKIPPED,
                status_msg="task disabled",
                slot_at=at(1),
            )
        ],
        at(2),
    )
    assert skipped is not None
    assert (await store.get_task(task_id)).status is TaskStatus.NEW
    execution = await store.get_execution(skipped)
    assert execution.status is ExecutionStatus.SKIPPED
    assert execution.status_msg == "task disabled"
    assert execution.finished_at == at(2)
    await queue(store, task_id, at(3))
    assert (await store.get_task(task_id)).status is TaskStatus.QUEUED


async def test_a_queued_row_does_not_hide_a_running_one(store: Store) -> None:
    """A task that runs stays `running` when another execution of it is queued."""
    task_id = await add_task(store)
    await start(store, task_id)
    await queue(store, task_id, at(1))
    [result] = await store.claim([slot_claim(task_id, None, None, at(2))], at(2))
    assert result.applied
    assert (await store.get_task(task_id)).status is TaskStatus.RUNNING


async def test_a_void_claim_writes_nothing(store: Store) -> None:
    """A claim naming a stale next_run_at, or an unknown task, inserts no row."""
    task_id = await add_task(store, next_run_at=at(60))
    stale = slot_claim(task_id, at(30), at(120), at(60))
    missing = slot_claim(404, None, at(1), at(1))
    assert await store.claim([stale, missing], T0) == [ClaimResult(False), ClaimResult(False)]
    assert (await store.get_task(task_id)).next_run_at == at(60)
    assert await store.list_executions(task_id) == []
    assert await store.list_executions(404) == []
    assert await store.queued_executions() == []


async def test_a_slot_is_never_stored_twice(store: Store) -> None:
    """A second row for the same (task, slot_at), by claim or add_executions, yields None."""
    task_id = await add_task(store, next_run_at=at(60))
    other = await add_task(store, "other")
    [first] = await store.claim([slot_claim(task_id, at(60), at(120), at(60))], T0)
    [second] = await store.claim([slot_claim(task_id, at(120), at(180), at(60), at(120))], T0)
    assert first.execution_ids[0] is not None
    assert second.execution_ids[0] is None
    rows = [schedule_row(task_id, at(60)), schedule_row(other, at(60))]
    assert (await store.add_executions(rows, T0))[0] is None
    stored = reversed(await store.list_executions(task_id))
    assert [e.slot_at for e in stored] == [at(60), at(120)]
    assert [e.slot_at for e in await store.list_executions(other)] == [at(60)]


# ---------------------------------------------------------------------------------------
# runs


async def test_mark_started_many_sets_executions_and_tasks_running(store: Store) -> None:
    """Started executions and their tasks become running; the task's last run times reset."""
    a, b = await add_task(store, "a"), await add_task(store, "b")
    old = await start(store, a)
    store.progress_nowait(old, a, {"progress": 30.0})
    await store.finish(old, a, ExecutionStatus.CANCELED, "stopped", at(1))
    before = await store.get_task(a)
    assert before.run_canceled_at == before.run_finished_at == at(1)
    ea, eb = await queue(store, a, at(2)), await queue(store, b, at(2))
    await store.mark_started_many([(ea, a), (eb, b)], at(3), "host-b")
    for task_id, execution_id in ((a, ea), (b, eb)):
        execution = await store.get_execution(execution_id)
        assert execution.status is ExecutionStatus.RUNNING
        assert execution.started_at == at(3)
        assert execution.dispatcher == "host-b"
        task = await store.get_task(task_id)
        assert task.status is TaskStatus.RUNNING
        assert task.run_started_at == at(3)
        assert task.run_finished_at is None
        assert task.run_canceled_at is None
        assert task.status_msg is None
        assert task.status_percent is None
        assert task.last_execution_id == execution_id
    await store.mark_started_many([], at(4), "host-b")  # nothing to do, no error


@pytest.mark.parametrize(
    ("status", "percent", "canceled"),
    [
        (ExecutionStatus.DONE, 100, False),
        (ExecutionStatus.ERROR, 40.0, False),
        (ExecutionStatus.CANCELED, 40.0, True),
    ],
)
async def test_finish_records_the_end_and_the_task_takes_the_status(
    store: Store, status: ExecutionStatus, percent: float, canceled: bool
) -> None:
    """finish() records status, message and time; the task follows (done: 100 %)."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id, at(1))
    store.progress_nowait(execution_id, task_id, {"progress": 40.0})
    await store.finish(execution_id, task_id, status, f"ended {status}", at(5))
    execution = await store.get_execution(execution_id)
    assert execution.status is status
    assert execution.status_msg == f"ended {status}"
    assert execution.finished_at == at(5)
    assert execution.started_at == at(1)
    task = await store.get_task(task_id)
    assert task.status == TaskStatus(str(status))
    assert task.status_msg == f"ended {status}"
    assert task.status_percent == percent
    assert task.run_started_at == at(1)
    assert task.run_finished_at == at(5)
    assert task.run_canceled_at == (at(5) if canceled else None)
    assert task.last_execution_id == execution_id


async def test_skipped_finish_keeps_the_status_of_the_last_run(store: Store) -> None:
    """A queued slot finished as `skipped` gives the task back its last run's status."""
    task_id = await add_task(store)
    ran = await start(store, task_id)
    await store.finish(ran, task_id, ExecutionStatus.DONE, None, at(1))
    slot = await queue(store, task_id, at(2))
    assert (await store.get_task(task_id)).status is TaskStatus.QUEUED
    await store.finish(slot, task_id, ExecutionStatus.SKIPPED, "overlap", at(3))
    execution = await store.get_execution(slot)
    assert execution.status is ExecutionStatus.SKIPPED
    assert execution.status_msg == "overlap"
    assert execution.finished_at == at(3)
    task = await store.get_task(task_id)
    assert task.status is TaskStatus.DONE
    assert task.last_execution_id == ran
    assert task.run_finished_at == at(1)


async def test_skipped_finish_of_a_never_run_task_goes_back_to_new(store: Store) -> None:
    """A task whose only queued slot is skipped is `new` again, never `skipped`."""
    task_id = await add_task(store)
    slot = await queue(store, task_id)
    await store.finish(slot, task_id, ExecutionStatus.SKIPPED, "missed", at(1))
    assert (await store.get_task(task_id)).status is TaskStatus.NEW


async def test_skipped_finish_keeps_queued_and_running_tasks(store: Store) -> None:
    """Skipping one slot leaves a task `queued` if another row waits, `running` if it runs."""
    task_id = await add_task(store)
    first, _second = await queue(store, task_id), await queue(store, task_id)
    await store.finish(first, task_id, ExecutionStatus.SKIPPED, "coalesced", at(1))
    assert (await store.get_task(task_id)).status is TaskStatus.QUEUED
    other = await add_task(store, "other")
    await start(store, other)
    slot = await queue(store, other, at(2))
    await store.finish(slot, other, ExecutionStatus.SKIPPED, "overlap", at(3))
    assert (await store.get_task(other)).status is TaskStatus.RUNNING


async def test_finish_of_an_older_run_does_not_hide_a_newer_running_one(store: Store) -> None:
    """When an older parallel run ends, a task whose newer run is running stays `running`."""
    task_id = await add_task(store)
    older = await start(store, task_id)
    newer = await start(store, task_id, at(1))
    await store.finish(older, task_id, ExecutionStatus.ERROR, "boom", at(2))
    assert (await store.get_execution(older)).status is ExecutionStatus.ERROR
    task = await store.get_task(task_id)
    assert task.status is TaskStatus.RUNNING
    assert task.last_execution_id == newer
    assert task.run_finished_at is None


async def test_finish_of_a_never_started_execution_updates_the_task(store: Store) -> None:
    """An execution refused before it started (error) still gives the task its status."""
    task_id = await add_task(store)
    execution_id = await queue(store, task_id)
    await store.finish(execution_id, task_id, ExecutionStatus.ERROR, "bad params", at(1))
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.ERROR
    task = await store.get_task(task_id)
    assert task.status is TaskStatus.ERROR
    assert task.status_msg == "bad params"


async def test_a_finished_execution_is_not_finished_again(store: Store) -> None:
    """A second finish() of an ended execution changes neither it nor its task."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await store.finish(execution_id, task_id, ExecutionStatus.DONE, "fine", at(1))
    execution, task = await store.get_execution(execution_id), await store.get_task(task_id)
    with contextlib.suppress(ConflictError):
        await store.finish(execution_id, task_id, ExecutionStatus.ERROR, "late", at(2))
    assert await store.get_execution(execution_id) == execution
    assert await store.get_task(task_id) == task


async def test_a_finished_execution_is_not_started_again(store: Store) -> None:
    """mark_started_many() leaves an execution that has already ended as it was."""
    task_id = await add_task(store)
    execution_id = await queue(store, task_id)
    await store.finish(execution_id, task_id, ExecutionStatus.SKIPPED, "overlap", at(1))
    execution, task = await store.get_execution(execution_id), await store.get_task(task_id)
    with contextlib.suppress(ConflictError):
        await store.mark_started_many([(execution_id, task_id)], at(2), "host-a")
    assert await store.get_execution(execution_id) == execution
    assert await store.get_task(task_id) == task


async def test_progress_nowait_records_fields_and_task_percent(store: Store) -> None:
    """progress_nowait sets the known progress fields; `progress` becomes the task's percent."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    fields = {
        "progress": 42.5,
        "size_todo": 1000,
        "size_done": 425,
        "nodes_todo": 8,
        "nodes_done": 3,
        "bandwidth": 12.5,
        "unknown": "ignored",
    }
    store.progress_nowait(execution_id, task_id, fields)
    await store.flush()
    execution = await store.get_execution(execution_id)
    assert (
        execution.progress,
        execution.size_todo,
        execution.size_done,
        execution.nodes_todo,
        execution.nodes_done,
        execution.bandwidth,
    ) == (42.5, 1000, 425, 8, 3, 12.5)
    assert (await store.get_task(task_id)).status_percent == 42.5
    store.progress_nowait(execution_id, task_id, {"size_done": 500})
    await store.flush()
    assert (await store.get_execution(execution_id)).size_done == 500
    assert (await store.get_execution(execution_id)).progress == 42.5
    assert (await store.get_task(task_id)).status_percent == 42.5


async def test_progress_of_an_older_execution_leaves_the_task_percent(store: Store) -> None:
    """Progress of an execution that is not the task's latest does not show on the task."""
    task_id = await add_task(store)
    older = await start(store, task_id)
    newer = await start(store, task_id, at(1))
    store.progress_nowait(newer, task_id, {"progress": 10.0})
    store.progress_nowait(older, task_id, {"progress": 90.0})
    await store.flush()
    assert (await store.get_execution(older)).progress == 90.0
    assert (await store.get_task(task_id)).status_percent == 10.0


async def test_set_running_status_nowait_pauses_and_resumes(store: Store) -> None:
    """set_running_status_nowait moves execution and task between running and paused."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    await store.flush()
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.PAUSED
    assert (await store.get_task(task_id)).status is TaskStatus.PAUSED
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.RUNNING)
    await store.flush()
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.RUNNING
    assert (await store.get_task(task_id)).status is TaskStatus.RUNNING


async def test_set_running_status_nowait_leaves_a_finished_execution(store: Store) -> None:
    """A pause that comes after the execution ended does not change the execution."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(1))
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    await store.flush()
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.DONE


async def test_late_pause_does_not_change_a_finished_task(store: Store) -> None:
    """A pause recorded after finish() leaves the task with its final status."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(1))
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    await store.flush()
    assert (await store.get_task(task_id)).status is TaskStatus.DONE


async def test_get_executions_and_list_executions(store: Store) -> None:
    """get_executions returns the existing ones by id; list_executions pages newest first."""
    task_id, other = await add_task(store), await add_task(store, "other")
    ids = [await queue(store, task_id, at(n)) for n in range(5)]
    elsewhere = await queue(store, other)
    found = await store.get_executions([ids[1], elsewhere, 999_999])
    assert found == {
        ids[1]: await store.get_execution(ids[1]),
        elsewhere: await store.get_execution(elsewhere),
    }
    assert await store.get_executions([]) == {}
    assert [e.id for e in await store.list_executions(task_id)] == ids[::-1]
    assert [e.id for e in await store.list_executions(task_id, limit=2, offset=1)] == [
        ids[3],
        ids[2],
    ]
    assert await store.list_executions(404) == []


# ---------------------------------------------------------------------------------------
# log


async def test_log_idx_counts_per_task_across_executions_and_reopen(
    store_opener: StoreOpener,
) -> None:
    """idx counts from 0 per task, continues across executions and after reopening."""
    async with store_opener() as store:
        a, b = await add_task(store, "a"), await add_task(store, "b")
        first = await start(store, a)
        for n in range(3):
            store.log_nowait(a, first, "info", f"a{n}", at(n))
        store.log_nowait(b, None, "info", "b0", at(0))
        second = await start(store, a, at(5))
        store.log_nowait(a, second, "error", "a3", at(5), status_percent=12.0)
        await store.flush()
        assert [(e.idx, e.msg) for e in await store.read_log(a)] == [
            (0, "a0"),
            (1, "a1"),
            (2, "a2"),
            (3, "a3"),
        ]
        assert [(e.idx, e.msg) for e in await store.read_log(b)] == [(0, "b0")]
    async with store_opener() as store:
        store.log_nowait(a, None, "info", "a4", at(9))
        store.log_nowait(b, None, "info", "b1", at(9))
        await store.flush()
        log_a = await store.read_log(a)
        assert [e.idx for e in log_a] == [0, 1, 2, 3, 4]
        assert [(e.idx, e.msg) for e in await store.read_log(b)] == [(0, "b0"), (1, "b1")]
    entry = log_a[3]
    assert (entry.task_id, entry.execution_id, entry.level, entry.msg) == (a, second, "error", "a3")
    assert entry.status_percent == 12.0
    assert entry.timestamp == at(5)


async def test_read_log_offset_limit_and_execution_filter(store: Store) -> None:
    """read_log returns entries from idx `offset`, at most `limit`, optionally of one execution."""
    task_id = await add_task(store)
    first = await start(store, task_id)
    second = await start(store, task_id, at(1))
    for n in range(10):
        store.log_nowait(task_id, (first, second)[n % 2], "info", f"m{n}", at(n))
    await store.flush()
    assert [e.idx for e in await store.read_log(task_id, offset=4)] == [4, 5, 6, 7, 8, 9]
    assert [e.idx for e in await store.read_log(task_id, offset=4, limit=3)] == [4, 5, 6]
    assert [e.idx for e in await store.read_log(task_id, limit=2)] == [0, 1]
    assert [e.idx for e in await store.read_log(task_id, execution_id=second)] == [1, 3, 5, 7, 9]
    assert [e.msg for e in await store.read_log(task_id, offset=4, execution_id=first)] == [
        "m4",
        "m6",
        "m8",
    ]
    assert await store.read_log(task_id, offset=10) == []
    assert await store.read_log(404) == []


async def test_log_keeps_head_marker_and_tail_per_execution(store_opener: StoreOpener) -> None:
    """Past log_entries_per_execution: the first lines, "... K lines left out ...", the last."""
    async with store_opener(log_entries_per_execution=5) as store:
        task_id = await add_task(store)
        capped = await start(store, task_id)
        for n in range(20):
            store.log_nowait(task_id, capped, "info", f"line {n}", at(n))
        other = await start(store, task_id, at(30))
        for n in range(3):
            store.log_nowait(task_id, other, "info", f"other {n}", at(30 + n))
        store.log_nowait(task_id, None, "info", "task-level", at(40))
        await store.flush()
        # Until the run ends, only its head is written: the rest waits in the tail ring.
        assert [e.msg for e in await store.read_log(task_id, execution_id=capped)] == [
            "line 0",
            "line 1",
        ]
        await store.finish(capped, task_id, ExecutionStatus.ERROR, "exit code 1", at(50))
        await store.finish(other, task_id, ExecutionStatus.DONE, None, at(50))
        entries = await store.read_log(task_id, execution_id=capped)
        assert [e.msg for e in entries] == [
            "line 0",
            "line 1",
            "... 16 lines left out ...",
            "line 18",
            "line 19",
        ]
        assert entries[2].level == "warning"
        assert entries[2].timestamp == at(17)  # the last line left out
        assert [e.msg for e in await store.read_log(task_id, execution_id=other)] == [
            "other 0",
            "other 1",
            "other 2",
        ]
        assert len(await store.read_log(task_id)) == 9


@pytest.mark.parametrize("count", [5, 6])
async def test_a_log_of_at_most_the_cap_is_kept_whole(
    store_opener: StoreOpener, count: int
) -> None:
    """A run logging exactly log_entries_per_execution lines keeps them all; one more: marker."""
    async with store_opener(log_entries_per_execution=5) as store:
        task_id = await add_task(store)
        execution_id = await start(store, task_id)
        for n in range(count):
            store.log_nowait(task_id, execution_id, "info", f"line {n}", at(n))
        await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(9))
        messages = [e.msg for e in await store.read_log(task_id, execution_id=execution_id)]
    if count == 5:
        assert messages == [f"line {n}" for n in range(5)]
    else:
        assert messages == ["line 0", "line 1", "... 2 lines left out ...", "line 4", "line 5"]


async def test_a_log_of_one_entry_per_execution_is_the_marker(store_opener: StoreOpener) -> None:
    """log_entries_per_execution = 1: one line is kept; two or more become the marker alone."""
    async with store_opener(log_entries_per_execution=1) as store:
        task_id = await add_task(store)
        one, many = await start(store, task_id), await start(store, task_id, at(1))
        store.log_nowait(task_id, one, "info", "only", at(0))
        for n in range(3):
            store.log_nowait(task_id, many, "info", f"line {n}", at(n))
        for execution_id in (one, many):
            await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(9))
        assert [e.msg for e in await store.read_log(task_id, execution_id=one)] == ["only"]
        assert [e.msg for e in await store.read_log(task_id, execution_id=many)] == [
            "... 3 lines left out ..."
        ]


async def test_lines_past_the_head_are_not_queued(store_opener: StoreOpener) -> None:
    """However much a run logs, what waits to be written is its head: the rest is counted."""
    async with store_opener(log_entries_per_execution=11) as store:
        task_id = await add_task(store)
        execution_id = await start(store, task_id)
        for n in range(100_000):
            store.log_nowait(task_id, execution_id, "info", f"line {n}", at(0))
        assert store.log_pending == 5
        await store.flush()
        assert store.log_pending == 0
        await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(9))
        entries = await store.read_log(task_id, execution_id=execution_id)
    assert [e.msg for e in entries][5:] == [
        "... 99990 lines left out ...",
        *(f"line {n}" for n in range(99_995, 100_000)),
    ]


async def test_entries_left_out_without_text_count_in_the_marker(
    store_opener: StoreOpener,
) -> None:
    """log_keeps_last is None until the head is full, then the ring's size; entries counted
    with log_left_out_nowait are in the marker's count (and nothing while in the head)."""
    async with store_opener(log_entries_per_execution=5) as store:
        task_id = await add_task(store)
        execution_id = await start(store, task_id)
        assert store.log_keeps_last(execution_id) is None
        store.log_nowait(task_id, execution_id, "info", "line 0", at(0))
        store.log_left_out_nowait(execution_id, 1000)  # in the head: ignored
        assert store.log_keeps_last(execution_id) is None
        store.log_nowait(task_id, execution_id, "info", "line 1", at(1))
        assert store.log_keeps_last(execution_id) == 3
        store.log_left_out_nowait(execution_id, 100)
        for n in range(2, 5):
            store.log_nowait(task_id, execution_id, "info", f"line {n}", at(n))
        await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(9))
        messages = [e.msg for e in await store.read_log(task_id, execution_id=execution_id)]
    assert messages == ["line 0", "line 1", "... 101 lines left out ...", "line 3", "line 4"]


async def test_closing_writes_the_tail_of_an_unfinished_run(store_opener: StoreOpener) -> None:
    """A run still logging when the store closes keeps its tail (the last lines are kept)."""
    async with store_opener(log_entries_per_execution=3) as store:
        task_id = await add_task(store)
        execution_id = await start(store, task_id)
        for n in range(10):
            store.log_nowait(task_id, execution_id, "info", f"line {n}", at(n))
    async with store_opener(log_entries_per_execution=3) as store:
        entries = await store.read_log(task_id, execution_id=execution_id)
    assert [e.msg for e in entries] == ["line 0", "... 8 lines left out ...", "line 9"]


async def test_log_backlog_bound_sets_log_full_until_half_drained(
    store_opener: StoreOpener,
) -> None:
    """More than the bound waiting: log_full; wait_log_room returns once the writer caught up."""
    async with store_opener(log_backlog_entries=10) as store:
        task_id = await add_task(store)
        assert not store.log_full
        await store.wait_log_room()  # at once
        for n in range(10):
            store.log_nowait(task_id, None, "info", f"m{n}", at(n))
        assert not store.log_full  # at the bound, not over it
        store.log_nowait(task_id, None, "info", "m10", at(10))
        assert store.log_full
        # Still queued (never dropped): the bound is for producers that can wait.
        assert store.log_pending == 11
        async with asyncio.timeout(5):
            await store.wait_log_room()
        assert not store.log_full
        await store.flush()
        assert store.log_pending == 0
        assert len(await store.read_log(task_id)) == 11


async def test_log_backlog_bound_counts_bytes_too(store_opener: StoreOpener) -> None:
    """A few huge entries make the backlog full as many small ones do."""
    async with store_opener(log_backlog_entries=10_000) as store:
        task_id = await add_task(store)
        for n in range(3):
            store.log_nowait(task_id, None, "info", "x" * 4 * 1024 * 1024, at(n))
        assert store.log_full
        async with asyncio.timeout(5):
            await store.wait_log_room()
        await store.flush()
        assert not store.log_full


async def test_ids_of_deleted_tasks_and_executions_are_not_issued_again(
    store_opener: StoreOpener,
) -> None:
    """After a delete, new tasks and executions get new ids, and a full log allowance."""
    async with store_opener(log_entries_per_execution=5) as store:
        old_task = await add_task(store, "old")
        old = await start(store, old_task)
        for n in range(10):
            store.log_nowait(old_task, old, "info", f"old {n}", at(n))
        await store.flush()
        await store.delete_task(old_task)
        new_task = await add_task(store, "new")
        new = await start(store, new_task, at(20))
        assert new_task != old_task
        assert new != old
        with pytest.raises(NotFoundError):
            await store.get_task(old_task)
        with pytest.raises(NotFoundError):
            await store.get_execution(old)
        for n in range(5):
            store.log_nowait(new_task, new, "info", f"new {n}", at(21 + n))
        await store.finish(new, new_task, ExecutionStatus.DONE, None, at(30))
        assert [e.msg for e in await store.read_log(new_task)] == [f"new {n}" for n in range(5)]


async def test_log_idx_of_each_task_follows_submission_order(store: Store) -> None:
    """Lines of several tasks submitted together get each task's next indices, in order."""
    a, b = await add_task(store, "a"), await add_task(store, "b")
    for n in range(6):
        store.log_nowait((a, b)[n % 3 == 0], None, "info", f"m{n}", at(n))
    await store.flush()
    assert [(e.idx, e.msg) for e in await store.read_log(a)] == [
        (0, "m1"),
        (1, "m2"),
        (2, "m4"),
        (3, "m5"),
    ]
    assert [(e.idx, e.msg) for e in await store.read_log(b)] == [(0, "m0"), (1, "m3")]


async def test_log_idx_after_a_task_was_deleted(store_opener: StoreOpener) -> None:
    """A task created after another was deleted logs from idx 0; other tasks go on counting,
    in the same store and after reopening it."""
    async with store_opener() as store:
        doomed, kept = await add_task(store, "doomed"), await add_task(store, "kept")
        for n in range(3):
            store.log_nowait(doomed, None, "info", f"d{n}", at(n))
            store.log_nowait(kept, None, "info", f"k{n}", at(n))
        await store.flush()
        await store.delete_task(doomed)
        reborn = await add_task(store, "doomed")
        store.log_nowait(reborn, None, "info", "r0", at(5))
        store.log_nowait(kept, None, "info", "k3", at(5))
        await store.flush()
        assert [(e.idx, e.msg) for e in await store.read_log(reborn)] == [(0, "r0")]
    async with store_opener() as store:
        store.log_nowait(reborn, None, "info", "r1", at(6))
        store.log_nowait(kept, None, "info", "k4", at(6))
        await store.flush()
        assert [(e.idx, e.msg) for e in await store.read_log(reborn)] == [(0, "r0"), (1, "r1")]
        assert [e.idx for e in await store.read_log(kept)] == [0, 1, 2, 3, 4]


async def test_log_idx_goes_on_after_history_was_pruned(store_opener: StoreOpener) -> None:
    """Pruning old runs with their lines never makes a task's log indices start again."""
    async with store_opener(history_per_task=2) as store:
        task_id = await add_task(store)
        for n in range(10):
            execution_id = await start(store, task_id, at(n))
            store.log_nowait(task_id, execution_id, "info", f"run {n}", at(n))
            await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(n))
        store.log_nowait(task_id, None, "info", "after", at(20))
        await store.flush()
        entries = await store.read_log(task_id)
        assert len(entries) < 11, "precondition: old runs and their lines were pruned"
        assert (entries[-1].idx, entries[-1].msg) == (10, "after")


async def test_log_cap_holds_across_reopening(store_opener: StoreOpener) -> None:
    """An execution's lines written before a reopen count towards its cap after it."""
    async with store_opener(log_entries_per_execution=5) as store:
        task_id = await add_task(store)
        execution_id = await start(store, task_id)
        for n in range(3):
            store.log_nowait(task_id, execution_id, "info", f"before {n}", at(n))
    async with store_opener(log_entries_per_execution=5) as store:
        for n in range(10):
            store.log_nowait(task_id, execution_id, "info", f"after {n}", at(10 + n))
        await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(30))
        entries = await store.read_log(task_id, execution_id=execution_id)
    assert [e.msg for e in entries] == ["before 0", "before 1", "before 2", "after 0", "after 1"]


async def test_log_lines_of_unknown_tasks_and_executions_are_dropped(store: Store) -> None:
    """A line naming a missing task or execution is dropped and takes no index."""
    task_id = await add_task(store)
    store.log_nowait(404, None, "info", "no task", T0)
    store.log_nowait(task_id, 999_999, "info", "no execution", T0)
    store.log_nowait(task_id, None, "info", "kept", at(1))
    await store.flush()
    assert await store.read_log(404) == []
    assert [(e.idx, e.msg) for e in await store.read_log(task_id)] == [(0, "kept")]


# ---------------------------------------------------------------------------------------
# history retention


async def test_history_bound_holds_within_ten_percent(store_opener: StoreOpener) -> None:
    """With history_per_task=20, the kept finished runs never exceed 22 while runs finish."""
    async with store_opener(history_per_task=20) as store:
        task_id = await add_task(store)
        for n in range(60):
            execution_id = await start(store, task_id, at(n))
            await store.finish(execution_id, task_id, ExecutionStatus.ERROR, "boom", at(n))
            count = len(await store.list_executions(task_id, limit=1000))
            assert count <= 22, (n, count)
        assert count >= 20


# ---------------------------------------------------------------------------------------
# recovery after a crash


async def test_recover_interrupted_marks_running_and_paused_as_error(store: Store) -> None:
    """Running and paused executions become error "interrupted"; queued ones stay queued."""
    running_task, paused_task = await add_task(store, "r"), await add_task(store, "p")
    queued_task, done_task = await add_task(store, "q"), await add_task(store, "d")
    running = await start(store, running_task, at(1))
    paused = await start(store, paused_task, at(2))
    store.set_running_status_nowait(paused, paused_task, ExecutionStatus.PAUSED)
    store.progress_nowait(paused, paused_task, {"progress": 25.0, "size_done": 7})
    done = await start(store, done_task, at(3))
    await store.finish(done, done_task, ExecutionStatus.DONE, "fine", at(4))
    queued_early = await queue(store, queued_task, at(5))
    queued_late = await queue(store, running_task, at(6))
    done_before = await store.get_task(done_task)
    queued_before = await store.get_task(queued_task)

    recovered = await store.recover_interrupted(at(100))

    assert [e.id for e in recovered] == [running, paused]
    for execution in recovered:
        assert execution.status is ExecutionStatus.ERROR
        assert execution.status_msg == "interrupted"
        assert execution.finished_at == at(100)
        assert execution == await store.get_execution(execution.id)
    assert recovered[1].progress == 25.0
    assert recovered[1].size_done == 7
    assert recovered[1].started_at == at(2)
    for task_id in (running_task, paused_task):
        task = await store.get_task(task_id)
        assert task.status is TaskStatus.ERROR
        assert task.status_msg == "interrupted"
        assert task.run_finished_at == at(100)
    assert await store.get_task(done_task) == done_before
    assert await store.get_task(queued_task) == queued_before
    assert [e.id for e in await store.queued_executions()] == [queued_early, queued_late]
    assert await store.recover_interrupted(at(200)) == []


async def test_json_values_read_back_exactly_whatever_their_numbers(store: Store) -> None:
    """Specs, state and trigger metadata read back as written: integers beyond 64 bits stay
    integers, floats and unicode stay as they were."""
    value = {"big": 2**70, "negative": -(2**63), "float": 0.1, "text": "é\u2028", "list": [1, 2.5]}
    spec = {**SPEC, "task_params": value}
    task = await insert(store, "numbers", spec=spec)
    assert (await store.get_task(task.id)).spec == spec
    assert (await store.get_tasks([task.id]))[task.id].spec == spec
    await store.save_state(task.id, value)
    assert (await store.get_task(task.id)).state == value
    execution_id = await queue(store, task.id, at(1), trigger_metadata=value)
    assert (await store.get_execution(execution_id)).trigger_metadata == value
    assert type((await store.get_task(task.id)).spec["task_params"]["big"]) is int


async def test_recovery_takes_back_starts_committed_ahead_of_an_instant_not_reached(
    store: Store,
) -> None:
    """A start committed ahead (`started_at` in the future) has not happened: recovery
    before that instant returns it to queued; one whose instant passed may have started and
    is interrupted (the rule of "Starts committed ahead" in taskd/store/base.py)."""
    early_task, late_task = await add_task(store, "early"), await add_task(store, "late")
    passed = await queue(store, early_task, at(1))
    ahead = await queue(store, late_task, at(1))
    await store.mark_started_many([(passed, early_task)], at(50), "host-a")
    await store.mark_started_many([(ahead, late_task)], at(150), "host-a")
    assert (await store.get_execution(ahead)).status is ExecutionStatus.RUNNING

    recovered = await store.recover_interrupted(at(100))

    assert [e.id for e in recovered] == [passed]
    assert recovered[0].status is ExecutionStatus.ERROR
    assert recovered[0].status_msg == "interrupted"
    back = await store.get_execution(ahead)
    assert back.status is ExecutionStatus.QUEUED
    assert back.started_at is None
    assert back.finished_at is None
    assert [e.id for e in await store.queued_executions()] == [ahead]
    task = await store.get_task(late_task)
    assert task.status is TaskStatus.QUEUED
    assert task.run_started_at is None
    # Claimed again, it starts once, at its time.
    await store.mark_started_many([(ahead, late_task)], at(150), "host-b")
    assert (await store.get_execution(ahead)).status is ExecutionStatus.RUNNING
    assert (await store.get_task(late_task)).status is TaskStatus.RUNNING
    assert await store.recover_interrupted(at(200)) != []


async def test_unstart_many_returns_starts_committed_ahead_to_queued(store: Store) -> None:
    """unstart_many() takes back running rows (and their tasks) and nothing else."""
    a, b, c = [await add_task(store, name) for name in "abc"]
    ahead = await queue(store, a, at(1))
    other = await queue(store, b, at(1))
    await store.mark_started_many([(ahead, a), (other, b)], at(10), "host-a")
    ended = await start(store, c, at(2))
    await store.finish(ended, c, ExecutionStatus.DONE, None, at(3))
    ended_before = await store.get_execution(ended)

    await store.unstart_many([(ahead, a), (ended, c)])
    await store.unstart_many([])  # nothing to do, no error

    back = await store.get_execution(ahead)
    assert (back.status, back.started_at, back.dispatcher) == (ExecutionStatus.QUEUED, None, None)
    task = await store.get_task(a)
    assert (task.status, task.run_started_at) == (TaskStatus.QUEUED, None)
    assert task.last_execution_id is None  # as before the start: it had no run
    # A task with an earlier run shows that run again (and its ending), but `queued`.
    again = await queue(store, c, at(4))
    await store.mark_started_many([(again, c)], at(20), "host-a")
    await store.unstart_many([(again, c)])
    shown = await store.get_task(c)
    assert (shown.status, shown.last_execution_id) == (TaskStatus.QUEUED, ended)
    assert (shown.run_started_at, shown.run_finished_at) == (at(2), at(3))
    assert (await store.get_execution(other)).status is ExecutionStatus.RUNNING
    assert (await store.get_task(b)).status is TaskStatus.RUNNING
    assert await store.get_execution(ended) == ended_before
    assert [e.id for e in await store.queued_executions()] == [ahead, again]


async def test_process_groups_of_running_executions_are_recorded_for_recovery(
    store_opener: StoreOpener,
) -> None:
    """record_process_group is committed; interrupted_process_groups lists running and
    paused executions' groups (a later record replaces one), until recovery marks them."""
    async with store_opener() as store:
        a, b, c = [await add_task(store, name) for name in "abc"]
        running = await start(store, a, at(1))
        paused = await start(store, b, at(2))
        store.set_running_status_nowait(paused, b, ExecutionStatus.PAUSED)
        finished = await start(store, c, at(3))
        queued = await queue(store, c, at(4))
        without = await start(store, a, at(5))
        await store.record_process_group(running, 4242, "boot:1")
        await store.record_process_group(running, 4343, "boot:2")  # replaces
        await store.record_process_group(paused, 5151, "boot:3")
        await store.record_process_group(finished, 6161, "boot:4")
        await store.finish(finished, c, ExecutionStatus.DONE, None, at(6))
        await store.record_process_group(queued, 7171, "boot:5")  # not running: no change
        await store.record_process_group(404, 1, "boot:6")  # unknown: no change, no error
        assert without  # running without a recorded group: not listed
    async with store_opener() as store:  # committed: it survives a reopen
        assert await store.interrupted_process_groups() == [
            (running, a, 4343, "boot:2"),
            (paused, b, 5151, "boot:3"),
        ]
        await store.recover_interrupted(at(100))
        assert await store.interrupted_process_groups() == []


async def test_queued_executions_lists_oldest_first(store: Store) -> None:
    """queued_executions() returns only queued rows, oldest first."""
    a, b = await add_task(store, "a"), await add_task(store, "b")
    first = await queue(store, b, at(1))
    await start(store, a, at(2))
    second = await queue(store, a, at(3), attempt=2, scheduled_for=at(60))
    third = await queue(store, b, at(4))
    queued = await store.queued_executions()
    assert [e.id for e in queued] == [first, second, third]
    assert all(e.status is ExecutionStatus.QUEUED for e in queued)
    assert (queued[1].attempt, queued[1].scheduled_for, queued[1].queued_at) == (2, at(60), at(3))


async def test_get_execution_of_unknown_id_is_not_found(store: Store) -> None:
    """get_execution raises NotFoundError for an unknown id."""
    with pytest.raises(NotFoundError):
        await store.get_execution(404)


# ---------------------------------------------------------------------------------------
# deferred runs


async def test_defer_ids_are_unguessable(store: Store) -> None:
    """Defer ids are long random tokens, all different, not derived from the task id."""
    task_id = await add_task(store)
    ids = [await store.create_defer(task_id, {}, T0, at(60)) for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(defer_id) >= 16 for defer_id in ids)
    assert all(str(task_id) != defer_id for defer_id in ids)


async def test_defer_of_a_deleted_task_is_unknown(store: Store) -> None:
    """A deferred run goes with its task: using it afterwards raises DeferError."""
    task_id = await add_task(store)
    defer_id = await store.create_defer(task_id, {}, T0, at(60))
    await store.delete_task(task_id)
    with pytest.raises(DeferError):
        await store.use_defer(defer_id, at(1))

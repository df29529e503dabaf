"""What the SQLite store does underneath the contract: the file, its schema, WAL, migrations,
group commit, and that "committed" means visible to another connection.

Each test uses a real database file under `tmp_path`; a separate plain `sqlite3` connection
to the same file sees committed transactions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from disk_faults import SqliteDiskFaults
from store_helpers import (
    SPEC,
    T0,
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
from taskd.model import TASK_QUERY_FIELDS, ExecutionStatus, TaskSource, TaskStatus, TriggerKind
from taskd.store import DB_FILE, ClaimResult, NewExecution, Store, open_store
from taskd.store.base import new_defer_id
from taskd.store.migrations import MIGRATIONS
from taskd.store.sqlite import _TASK_QUERY_SQL, SqliteStore


def query(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run `sql` on a fresh plain sqlite3 connection: it sees committed data only."""
    with closing(sqlite3.connect(path)) as cx:
        return cx.execute(sql, params).fetchall()


def count_rows(path: Path, table: str, task_id: int) -> int:
    """Count the committed rows of `table` that belong to `task_id`."""
    return int(query(path, f"SELECT count(*) FROM {table} WHERE task_id = ?", (task_id,))[0][0])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The database file of one test."""
    return tmp_path / "taskd.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    """A SQLite store with the default limits on a fresh file (not the contract fixture)."""
    async with SqliteStore.open(db_path) as opened:
        yield opened


# ---------------------------------------------------------------------------------------
# schema


async def test_new_file_gets_current_schema_version_and_wal(store: Store, db_path: Path) -> None:
    """A new file is migrated to user_version == len(MIGRATIONS) and put in WAL mode."""
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {row[0] for row in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"tasks", "executions", "log_entries", "deferred_runs"} <= tables


async def test_foreign_keys_are_enforced_on_the_store_connection(
    store: Store, db_path: Path
) -> None:
    """foreign_keys is on: an execution of a missing task is refused with its whole call."""
    task_id = await add_task(store)
    with pytest.raises(NotFoundError):
        await store.add_executions(
            [
                NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL),
                NewExecution(task_id=404, trigger=TriggerKind.MANUAL),
            ],
            T0,
        )
    assert query(db_path, "SELECT count(*) FROM executions") == [(0,)]
    assert (await store.get_task(task_id)).status is TaskStatus.NEW


async def test_open_creates_missing_directories(tmp_path: Path) -> None:
    """Store.open creates the parent directories of a new database file."""
    path = tmp_path / "state" / "taskd" / "taskd.db"
    async with SqliteStore.open(path) as store:
        await add_task(store)
    assert query(path, "SELECT name FROM tasks") == [("t",)]


async def test_reopening_keeps_data_and_schema(db_path: Path) -> None:
    """Data written before closing is there after reopening; the schema is not re-applied."""
    async with SqliteStore.open(db_path) as store:
        task_id = await add_task(store, "kept", next_run_at=at(60))
        execution_id = await start(store, task_id)
        before = await store.get_task(task_id)
    async with SqliteStore.open(db_path) as store:
        assert await store.get_task(task_id) == before
        assert (await store.get_execution(execution_id)).status is ExecutionStatus.RUNNING
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_an_older_file_is_migrated_and_keeps_its_data(db_path: Path) -> None:
    """A file at schema version 1 gets the later migrations on open; its tasks stay."""
    async with SqliteStore.open(db_path) as store:
        task_id = await add_task(store, "old")
    with closing(sqlite3.connect(db_path)) as cx:
        cx.execute("DROP INDEX tasks_source")
        cx.execute("DROP INDEX tasks_owner")
        cx.execute("ALTER TABLE executions DROP COLUMN process_group")
        cx.execute("ALTER TABLE executions DROP COLUMN process_start")
        cx.execute("ALTER TABLE tasks DROP COLUMN retired_at")
        cx.execute("PRAGMA user_version = 1")
    async with SqliteStore.open(db_path) as store:
        old = await store.get_task(task_id)
        assert (old.name, old.retired_at) == ("old", None)
    assert query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    indexes = query(
        db_path,
        "SELECT name FROM sqlite_master WHERE name IN ('tasks_source', 'tasks_owner')"
        " ORDER BY name",
    )
    assert indexes == [("tasks_owner",), ("tasks_source",)]
    columns = {row[1] for row in query(db_path, "PRAGMA table_info(executions)")}
    assert {"process_group", "process_start"} <= columns
    columns = query(db_path, "SELECT name FROM pragma_table_info('tasks')")
    assert ("retired_at",) in columns


async def test_newer_schema_version_is_refused(db_path: Path) -> None:
    """A file with a higher user_version than this taskd knows is refused, and not migrated."""
    newer = len(MIGRATIONS) + 1
    with closing(sqlite3.connect(db_path)) as cx:
        cx.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(RuntimeError, match=rf"schema version {newer}.*upgrade taskd"):
        async with SqliteStore.open(db_path):
            pytest.fail("a newer database was opened")
    assert query(db_path, "PRAGMA user_version") == [(newer,)]
    assert query(db_path, "SELECT name FROM sqlite_master") == []


# ---------------------------------------------------------------------------------------
# tasks


async def test_duplicate_name_is_a_conflict_and_changes_nothing(
    store: Store, db_path: Path
) -> None:
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
    assert query(db_path, "SELECT count(*) FROM tasks") == [(1,)]


async def test_delete_cascades_executions_log_and_defers(store: Store, db_path: Path) -> None:
    """Deleting a task removes its executions, log entries and deferred runs, nothing else."""
    doomed, kept = await add_task(store, "doomed"), await add_task(store, "kept")
    for task_id in (doomed, kept):
        execution_id = await start(store, task_id)
        store.log_nowait(task_id, execution_id, "info", "hello", T0)
        store.log_nowait(task_id, None, "info", "task-level", T0)
        await store.create_defer(task_id, {"k": 1}, T0, at(3600))
    await store.flush()
    tables = ("executions", "log_entries", "deferred_runs")
    assert [count_rows(db_path, t, doomed) for t in tables] == [1, 2, 1]
    await store.delete_task(doomed)
    assert [count_rows(db_path, t, doomed) for t in tables] == [0, 0, 0]
    assert [count_rows(db_path, t, kept) for t in tables] == [1, 2, 1]
    assert query(db_path, "SELECT id FROM tasks") == [(kept,)]
    with pytest.raises(NotFoundError):
        await store.get_task(doomed)


def test_query_fields_map_to_sql_for_exactly_the_model_fields() -> None:
    """The SQL behind query_tasks covers model.TASK_QUERY_FIELDS, no field more or less."""
    assert set(_TASK_QUERY_SQL) == TASK_QUERY_FIELDS


async def test_open_store_uses_the_state_directory_file(tmp_path: Path) -> None:
    """open_store keeps its data in `state_dir / DB_FILE`, creating the directory."""
    state_dir = tmp_path / "state" / "nested"
    async with open_store(state_dir, history_per_task=7, log_entries_per_execution=9) as store:
        await add_task(store, "here")
    assert query(state_dir / DB_FILE, "SELECT name FROM tasks") == [("here",)]


# ---------------------------------------------------------------------------------------
# durability and group commit


async def test_awaited_write_is_committed(store: Store, db_path: Path) -> None:
    """Once `await insert_task(...)` returns, another connection sees the row."""
    task_id = await add_task(store, "acked")
    assert query(db_path, "SELECT id, name FROM tasks") == [(task_id, "acked")]
    await store.save_state(task_id, {"n": 1})
    assert query(db_path, "SELECT state FROM tasks") == [('{"n":1}',)]


async def test_nowait_writes_are_committed_by_flush(store: Store, db_path: Path) -> None:
    """log/progress/status `*_nowait` writes are visible to another connection after flush()."""
    task_id = await add_task(store)
    execution_id = await start(store, task_id)
    store.log_nowait(task_id, execution_id, "info", "one", at(1))
    store.progress_nowait(execution_id, task_id, {"progress": 50.0})
    store.set_running_status_nowait(execution_id, task_id, ExecutionStatus.PAUSED)
    await store.flush()
    assert query(db_path, "SELECT msg FROM log_entries") == [("one",)]
    assert query(db_path, "SELECT progress, status FROM executions") == [(50.0, "paused")]
    assert query(db_path, "SELECT status_percent, status FROM tasks") == [(50.0, "paused")]


async def test_closing_commits_pending_nowait_writes(db_path: Path) -> None:
    """Leaving the store's context commits `*_nowait` writes still pending."""
    async with SqliteStore.open(db_path) as store:
        task_id = await add_task(store)
        store.log_nowait(task_id, None, "info", "last words", T0)
    assert query(db_path, "SELECT msg FROM log_entries") == [("last words",)]


@pytest.mark.slow
async def test_flush_returns_while_other_writes_keep_coming(store: Store, db_path: Path) -> None:
    """flush() returns once earlier writes committed, even if new writes keep arriving."""
    task_id = await add_task(store)

    async def chatter() -> None:
        for n in range(20_000):
            store.log_nowait(task_id, None, "debug", f"chatter {n}", T0)
            await asyncio.sleep(0)

    producer = asyncio.create_task(chatter())
    try:
        await asyncio.sleep(0)
        store.log_nowait(task_id, None, "info", "marker", T0)
        await store.flush()
        assert query(db_path, "SELECT count(*) FROM log_entries WHERE msg = 'marker'") == [(1,)]
        assert not producer.done(), "flush() returned only after the stream of writes ended"
    finally:
        await producer


async def test_concurrent_writes_share_few_transactions(store: Store, db_path: Path) -> None:
    """500 concurrent writes are all committed, in far fewer transactions than writes."""
    before = store.batches_written
    tasks = await asyncio.gather(*(insert(store, f"c{i}", next_run_at=at(i)) for i in range(500)))
    batches = store.batches_written - before
    assert 1 <= batches <= 10, batches
    assert len({task.id for task in tasks}) == 500
    assert query(db_path, "SELECT count(*) FROM tasks") == [(500,)]
    assert await store.count_tasks() == 500


async def test_a_refused_write_fails_alone_in_its_batch(store: Store, db_path: Path) -> None:
    """A duplicate-name insert among 50 good ones in one batch fails; the 50 commit."""
    original = await store.get_task(await add_task(store, "taken"))
    other = await add_task(store, "other")
    before = store.batches_written
    names = [f"g{i}" for i in range(25)] + ["taken"] + [f"g{i}" for i in range(25, 50)]
    results = await asyncio.gather(
        *(insert(store, name, spec={"n": name}, now=at(1)) for name in names),
        store.update_task(
            other, spec=SPEC, enabled=True, next_run_at=None, now=at(1), expected_version=7
        ),
        store.delete_task(404),
        return_exceptions=True,
    )
    assert store.batches_written - before == 1, "precondition: all writes in one batch"
    errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert sorted(errors) == [25, 51, 52]
    assert isinstance(errors[25], ConflictError)
    assert isinstance(errors[51], ConflictError)
    assert isinstance(errors[52], NotFoundError)
    assert await store.get_task(original.id) == original
    assert (await store.get_task(other)).version == 1
    committed = {row[0] for row in query(db_path, "SELECT name FROM tasks")}
    assert committed == {"taken", "other", *(f"g{i}" for i in range(50))}


# ---------------------------------------------------------------------------------------
# claims


async def test_claim_applies_only_if_next_run_at_still_matches(store: Store, db_path: Path) -> None:
    """A claim naming a stale next_run_at is void: ClaimResult(applied=False), nothing written."""
    task_id = await add_task(store, next_run_at=at(60))
    stale = slot_claim(task_id, at(30), at(120), at(60))
    missing = slot_claim(404, None, at(1))
    assert await store.claim([stale, missing], T0) == [ClaimResult(False), ClaimResult(False)]
    task = await store.get_task(task_id)
    assert task.next_run_at == at(60)
    assert task.status is TaskStatus.NEW
    assert query(db_path, "SELECT count(*) FROM executions") == [(0,)]


async def test_a_slot_is_never_inserted_twice(store: Store, db_path: Path) -> None:
    """A second row for the same (task, slot_at), by claim or add_executions, yields None."""
    task_id = await add_task(store, next_run_at=at(60))
    other = await add_task(store, "other")
    [first] = await store.claim([slot_claim(task_id, at(60), at(120), at(60))], T0)
    [second] = await store.claim([slot_claim(task_id, at(120), at(180), at(60), at(120))], T0)
    assert first.applied
    assert second.applied
    assert first.execution_ids[0] is not None
    assert second.execution_ids[0] is None
    assert second.execution_ids[1] is not None
    rows = [
        schedule_row(task_id, at(60)),
        schedule_row(other, at(60)),
        schedule_row(task_id, at(180)),
    ]
    ids = await store.add_executions(rows, T0)
    assert ids[0] is None
    assert ids[1] is not None  # the same instant of another task is another slot
    assert ids[2] is not None
    assert (await store.get_task(task_id)).next_run_at == at(180)
    slots = query(
        db_path, "SELECT slot_at FROM executions WHERE task_id = ? ORDER BY id", (task_id,)
    )
    assert slots == [(to_micros(at(60)),), (to_micros(at(120)),), (to_micros(at(180)),)]


# ---------------------------------------------------------------------------------------
# log


async def test_two_stores_on_one_file_share_a_task_log(db_path: Path) -> None:
    """Two stores on one file (as two processes would be) give a task's lines distinct,
    gapless indices, each store's lines in the order it wrote them."""
    async with SqliteStore.open(db_path) as one, SqliteStore.open(db_path) as two:
        task_id = await add_task(one)
        for n in range(10):
            (one, two)[n % 2].log_nowait(task_id, None, "info", f"step {n}", at(n))
            await (one, two)[n % 2].flush()
        for n in range(100):
            one.log_nowait(task_id, None, "info", f"one {n}", at(20))
            two.log_nowait(task_id, None, "info", f"two {n}", at(20))
        await asyncio.gather(one.flush(), two.flush())
        entries = await two.read_log(task_id, limit=1000)
    assert [e.idx for e in entries] == list(range(210))
    assert [e.msg for e in entries[:10]] == [f"step {n}" for n in range(10)]
    for name in ("one", "two"):
        assert [e.msg for e in entries if e.msg.startswith(name)] == [
            f"{name} {n}" for n in range(100)
        ]


# ---------------------------------------------------------------------------------------
# history retention


async def test_history_is_pruned_to_the_newest_executions(db_path: Path) -> None:
    """With history_per_task=10, 50 finished runs leave at most 11, the newest, with their log."""
    async with SqliteStore.open(db_path, history_per_task=10) as store:
        task_id = await add_task(store)
        other = await add_task(store, "other")
        other_run = await start(store, other)
        await store.finish(other_run, other, ExecutionStatus.DONE, None, T0)
        old_queued = await queue(store, task_id)
        old_running = await start(store, task_id)
        finished = []
        for n in range(50):
            execution_id = await start(store, task_id, at(n))
            store.log_nowait(task_id, execution_id, "info", f"run {n}", at(n))
            await store.finish(execution_id, task_id, ExecutionStatus.DONE, None, at(n))
            finished.append(execution_id)
        await store.flush()
        kept = [e.id for e in await store.list_executions(task_id, limit=1000)]
        kept_finished = [i for i in kept if i in finished]
        assert 10 <= len(kept_finished) <= 11
        assert sorted(kept_finished) == finished[-len(kept_finished) :]
        assert old_queued in kept
        assert old_running in kept
        log_executions = {e.execution_id for e in await store.read_log(task_id, limit=1000)}
        assert log_executions == set(kept_finished)
        assert [e.id for e in await store.list_executions(other)] == [other_run]
    orphans = query(
        db_path,
        "SELECT count(*) FROM log_entries WHERE execution_id IS NOT NULL"
        " AND execution_id NOT IN (SELECT id FROM executions)",
    )
    assert orphans == [(0,)]


# ---------------------------------------------------------------------------------------
# deferred runs


async def test_defer_is_used_once(store: Store, db_path: Path) -> None:
    """use_defer returns the task and metadata once; a second use raises DeferError."""
    task_id = await add_task(store)
    defer_id = await store.create_defer(task_id, {"reason": "later", "n": [1]}, T0, at(3600))
    assert await store.use_defer(defer_id, at(10)) == (task_id, {"reason": "later", "n": [1]})
    with pytest.raises(DeferError, match="used"):
        await store.use_defer(defer_id, at(11))
    assert query(db_path, "SELECT used_at FROM deferred_runs") == [(to_micros(at(10)),)]


async def test_unknown_and_expired_defers_are_refused(store: Store, db_path: Path) -> None:
    """An unknown or expired defer id raises DeferError and marks nothing used."""
    task_id = await add_task(store)
    defer_id = await store.create_defer(task_id, {}, T0, at(60))
    with pytest.raises(DeferError, match="unknown"):
        await store.use_defer("no-such-id", at(1))
    with pytest.raises(DeferError, match="expired"):
        await store.use_defer(defer_id, at(60))
    with pytest.raises(DeferError, match="expired"):
        await store.use_defer(defer_id, at(61))
    assert query(db_path, "SELECT used_at FROM deferred_runs") == [(None,)]
    assert await store.use_defer(await store.create_defer(task_id, {}, T0, at(60)), at(59)) == (
        task_id,
        {},
    )


async def test_defer_of_an_unknown_task_is_not_found(store: Store, db_path: Path) -> None:
    """create_defer for an unknown task raises NotFoundError and writes nothing."""
    with pytest.raises(NotFoundError):
        await store.create_defer(404, {}, T0, at(60))
    assert query(db_path, "SELECT count(*) FROM deferred_runs") == [(0,)]


# ---------------------------------------------------------------------------------------
# an unusable file or disk


@pytest.mark.slow
async def test_a_read_that_gets_no_answer_times_out_as_store_unavailable(db_path: Path) -> None:
    """A read waiting behind a database thread that hangs (a frozen file system, here a
    sleep on that thread) raises StoreUnavailableError after `read_timeout_sec`."""
    async with SqliteStore.open(db_path, read_timeout_sec=0.05) as store:
        task_id = await add_task(store)
        hang = asyncio.ensure_future(store._conn._execute(time.sleep, 0.5))  # type: ignore[no-untyped-call]
        await asyncio.sleep(0)  # the sleep is on the database thread's queue first
        try:
            with pytest.raises(StoreUnavailableError, match=r"no answer .* within 0\.05 s"):
                await store.get_task(task_id)
        finally:
            await hang
        assert (await store.get_task(task_id)).id == task_id


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("state dir is a file", "cannot create the state directory"),
        ("database is a directory", "cannot open the database"),
        ("database is not a database", "cannot use the database"),
    ],
)
async def test_an_unusable_state_directory_raises_store_unavailable_with_the_path(
    tmp_path: Path, layout: str, reason: str
) -> None:
    """Opening where no database can live raises StoreUnavailableError naming the path
    and the reason (root ignores modes, so the faults are made of misplaced files)."""
    state_dir = tmp_path / "state"
    if layout == "state dir is a file":
        state_dir.write_text("not a directory\n")
    elif layout == "database is a directory":
        (state_dir / DB_FILE).mkdir(parents=True)
    else:
        state_dir.mkdir()
        (state_dir / DB_FILE).write_bytes(b"this is not an SQLite file, " * 100)
    with pytest.raises(StoreUnavailableError) as raised:
        async with open_store(state_dir):
            pass
    assert reason in raised.value.reason
    assert str(state_dir) in raised.value.reason


async def test_held_writes_are_bounded_and_the_excess_is_counted(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past HELD_WRITES_MAX failed `*_nowait` writes, the newest are dropped and counted;
    the held ones land once writes succeed again."""
    monkeypatch.setattr("taskd.store.sqlite.HELD_WRITES_MAX", 3)
    task_id = await add_task(store)
    faults = SqliteDiskFaults()
    await faults.refuse_writes(store)
    for n in range(5):
        store.log_nowait(task_id, None, "info", f"line {n}", T0)
    with contextlib.suppress(StoreUnavailableError):
        await store.flush()
    assert store.writes_dropped == 2
    await faults.restore(store)
    await add_task(store, "after")  # a write that succeeds sends the held ones at once
    await store.flush()
    await store.flush()
    assert [entry.msg for entry in await store.read_log(task_id)] == ["line 0", "line 1", "line 2"]


async def test_the_database_file_is_created_private_whatever_the_umask(db_path: Path) -> None:
    """Under umask 022 the new database file and its -wal file are 0600: task params hold
    secrets, and outside systemd nothing else narrows the mode."""
    old = os.umask(0o022)
    try:
        async with SqliteStore.open(db_path) as store:
            await add_task(store, "t")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db_path.parent.iterdir()}
    finally:
        os.umask(old)
    assert modes[db_path.name] == 0o600
    assert modes[db_path.name + "-wal"] == 0o600


async def test_an_owners_list_uses_the_indexes(store: Store, db_path: Path) -> None:
    """The owner filter is answered through the owner and source indexes, not a scan of
    every task (the query plan of the count)."""
    await add_task(store, "mine", by="alice")
    plan = query(
        db_path,
        "EXPLAIN QUERY PLAN SELECT count(*) FROM tasks"
        " WHERE (created_by = 'alice' AND source = 'api' OR source = 'config')",
    )
    details = " ".join(str(row[-1]) for row in plan)
    assert "tasks_owner" in details, details
    assert "tasks_source" in details, details


def test_defer_ids_never_start_with_a_dash() -> None:
    """A defer id is typed on command lines (`taskd ctl run-defer ID`): a leading `-` would
    read as an option. 5,000 draws: a plain token_urlsafe starts with `-` 1 time in 64."""
    ids = [new_defer_id() for _ in range(5_000)]
    assert not [defer_id for defer_id in ids if defer_id.startswith("-")]
    assert all(len(defer_id) >= 16 for defer_id in ids)
    assert len(set(ids)) == len(ids)

"""The SQLite store's separate read connection (issue 10, item 4): reads made inside
`separate_reads()` (the API's) never wait for a write batch; reads outside it (the
engine's) go through the writer's connection as before; both see every committed write.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from store_helpers import T0, add_task

from taskd.store.base import reads_separately, separate_reads
from taskd.store.sqlite import SqliteStore


async def test_separate_reads_do_not_wait_for_a_write_batch(tmp_path: Path) -> None:
    """While a write batch holds the writer's thread (blocked until the test releases it,
    at most 10 s), a read inside `separate_reads()` answers and sees the last committed
    state; a read outside it answers only after the batch."""
    async with SqliteStore.open(tmp_path / "taskd.db") as store:
        task_id = await add_task(store, "a")
        release = threading.Event()
        slow = asyncio.create_task(store._submit(lambda cx: release.wait(10)))
        await asyncio.sleep(0.05)  # the batch is on the writer's thread
        try:
            with separate_reads():
                assert reads_separately()
                found = await asyncio.wait_for(store.get_task(task_id), timeout=5)
            assert found.name == "a"
            assert not slow.done()  # the read did not wait for the batch
            assert not reads_separately()
            behind = asyncio.create_task(store.get_task(task_id))  # the writer's connection
            await asyncio.sleep(0.05)
            assert not behind.done()
        finally:
            release.set()
        assert (await behind).name == "a"
        assert await slow


async def test_separate_reads_see_committed_writes(tmp_path: Path) -> None:
    """A write, once awaited, is visible to the separate read connection."""
    async with SqliteStore.open(tmp_path / "taskd.db") as store:
        with separate_reads():
            assert await store.count_tasks() == 0
            await add_task(store, "b")
            assert await store.count_tasks() == 1
            assert (await store.find_task("b")) is not None


async def test_single_task_reads_run_on_the_loop(tmp_path: Path) -> None:
    """A task with its last execution, read inside `separate_reads()`, comes through the
    loop's own read-only connection: it answers while the read thread is held (blocked
    until the test releases it, at most 10 s), and sees what was committed just before."""
    async with SqliteStore.open(tmp_path / "taskd.db") as store:
        task_id = await add_task(store, "a")
        assert store._reader is not None
        release = threading.Event()
        held = asyncio.ensure_future(store._reader._execute(lambda: release.wait(10)))
        await asyncio.sleep(0.05)  # the read thread is busy
        try:
            await store.set_next_run_at(task_id, T0)  # a committed write
            with separate_reads():
                found = await asyncio.wait_for(
                    store.get_task_with_last_execution(task_id), timeout=5
                )
                assert found is not None
                assert (
                    await asyncio.wait_for(
                        store.get_task_with_last_execution(task_id + 1000), timeout=5
                    )
                    is None
                )
            assert not held.done(), "the reads did not go through the read thread"
        finally:
            release.set()
        await held
        task, last = found
        assert (task.id, task.next_run_at, last) == (task_id, T0, None)


async def test_a_busy_loop_read_goes_to_the_read_thread(tmp_path: Path) -> None:
    """When SQLite answers busy on the loop's connection (never waited for there), the read
    is made through the read thread instead and gives the same answer. The busy answer is
    real: the loop's connection is swapped for one to a second file that another connection
    holds locked."""
    other = tmp_path / "locked.db"
    holder = sqlite3.connect(other, isolation_level=None)
    holder.execute("CREATE TABLE x (a)")
    holder.execute("BEGIN EXCLUSIVE")
    busy = sqlite3.connect(other, isolation_level=None, check_same_thread=False)
    busy.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError) as refused:
        busy.execute("SELECT * FROM x")
    assert refused.value.sqlite_errorname == "SQLITE_BUSY", "precondition: busy at once"
    try:
        async with SqliteStore.open(tmp_path / "taskd.db") as store:
            task_id = await add_task(store, "a")
            with separate_reads():
                direct = await store.get_task_with_last_execution(task_id)
                real = store._loop_reader
                store._loop_reader = busy
                try:
                    fallback = await store.get_task_with_last_execution(task_id)
                finally:
                    store._loop_reader = real
            assert direct is not None
            assert fallback is not None
            assert fallback[0] == direct[0]
    finally:
        busy.close()
        holder.execute("ROLLBACK")
        holder.close()

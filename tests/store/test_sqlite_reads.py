"""The SQLite store's separate read connection (issue 10, item 4): reads made inside
`separate_reads()` (the API's) never wait for a write batch; reads outside it (the
engine's) go through the writer's connection as before; both see every committed write.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from store_helpers import add_task

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

"""A task that prints without end, through the real engine: what is stored, what is held.

The stored log of a run is its head, one "... K lines left out ..." line and its tail
(`log_entries_per_execution` in all); lines between are counted, never queued. When the
store's writer falls behind, the shell module stops reading the task's pipes until the log
backlog has drained, so what waits to be written stays within the store's bound.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from engine_fixtures import open_engine

from taskd.modules.shell import SLICE_LINES

# That the loop is never held while output is split into lines is tested in
# test_modules_shell.py (under `no_blocking`); here the store is real and the figures exact.
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="runs shell commands")

FLOOD_SEC = 30.0  # a hang detector for a run that prints a few hundred thousand lines


async def test_a_flood_keeps_head_marker_and_tail_and_the_last_line(tmp_path: Path) -> None:
    """200,000 lines: exactly log_entries_per_execution entries - 500 first, the marker
    with the count left out, 499 last (the last printed line, then the run's ending)."""
    async with open_engine(tmp_path / "taskd.db") as engine:
        task = await engine.create("flood", module="shell", params={"command": "seq 200000"})
        execution_id = await engine.core.run(task.id)
        await engine.tick()
        async with asyncio.timeout(FLOOD_SEC):
            await engine.runner.drain()
        entries = await engine.store.read_log(task.id, execution_id=execution_id, limit=5000)
    messages = [entry.msg for entry in entries]
    assert len(messages) == 1000
    assert messages[0].startswith("started process")
    assert messages[1:500] == [str(n) for n in range(1, 500)]
    # Logged: "started process", 200,000 lines, "done: exit code 0"; kept: 500 + 499.
    assert messages[500] == "... 199003 lines left out ..."
    assert entries[500].level == "warning"
    assert messages[501:] == [*(str(n) for n in range(199_503, 200_001)), "done: exit code 0"]
    assert [entry.idx for entry in entries] == list(range(1000))


async def test_the_log_backlog_stays_bounded_and_reading_pauses(tmp_path: Path) -> None:
    """A head far larger than the backlog bound: reading pauses whenever the backlog is
    full, what waits to be written never passes the bound by more than one slice of lines,
    and every line is stored in order."""
    bound = 500
    async with open_engine(
        tmp_path / "taskd.db",
        store_options={"log_entries_per_execution": 100_000, "log_backlog_entries": bound},
    ) as engine:
        store = engine.store
        waits = 0
        wait_log_room = store.wait_log_room

        async def counting_wait() -> None:
            nonlocal waits
            waits += 1
            await wait_log_room()

        store.wait_log_room = counting_wait  # type: ignore[method-assign]
        highest = 0

        async def sample() -> None:
            nonlocal highest
            while True:
                highest = max(highest, store.log_pending)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        try:
            task = await engine.create("flood", module="shell", params={"command": "seq 60000"})
            execution_id = await engine.core.run(task.id)
            await engine.tick()
            async with asyncio.timeout(FLOOD_SEC):
                await engine.runner.drain()
        finally:
            sampler.cancel()
        first = await store.read_log(task.id, execution_id=execution_id, limit=2)
        last = await store.read_log(task.id, execution_id=execution_id, offset=59_999)
    assert waits > 0
    assert bound < highest <= bound + SLICE_LINES
    assert [entry.msg for entry in first] == [first[0].msg, "1"]
    # Every line, in order: "started process", 1 ... 60000, the ending.
    assert [(entry.idx, entry.msg) for entry in last] == [
        (59_999, "59999"),
        (60_000, "60000"),
        (60_001, "done: exit code 0"),
    ]

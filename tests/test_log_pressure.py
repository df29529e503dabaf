"""A task that prints without end, through the real engine: what is stored, what is held.

The stored log of a run is its head, one "... K lines left out ..." line and its tail
(`log_entries_per_execution` in all); lines between are counted, never queued. When the
store's writer falls behind, the shell module stops reading the task's pipes until the log
backlog has drained, so what waits to be written stays within the store's bound.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_fixtures import Engine, open_engine

from taskd.model import ExecutionStatus
from taskd.modules.python import PythonModule
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


@pytest.mark.slow
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


# -- a python target that logs without end ----------------------------------------------

FLOOD_TARGET = """
    import asyncio

    async def flood(ctx, lines, every):
        for n in range(1, lines + 1):
            ctx.log("info", str(n))
            if n % every == 0:
                await asyncio.sleep(0)  # a target doing I/O between its lines
        return "flooded"
"""


@pytest.fixture
def flood_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module with the `flood` target; its name (unloaded afterwards)."""
    name = "taskd_test_flood_target"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FLOOD_TARGET))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


class _Peaks:
    """Samples the store's log backlog and this process's RSS while a flood runs."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.backlog = 0
        self.rss_start = _rss_bytes()
        self.rss = self.rss_start
        self.pings = 0

    async def sample(self) -> None:
        while True:
            self.backlog = max(self.backlog, self.store.log_pending)
            self.rss = max(self.rss, _rss_bytes())
            await asyncio.sleep(0)

    async def ping(self) -> None:
        """Health's own check, answered again and again while the flood runs."""
        while True:
            async with asyncio.timeout(FLOOD_SEC):
                await self.store.ping()
            self.pings += 1
            await asyncio.sleep(0.01)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _flood(engine: Engine, target: str, lines: int, every: int) -> tuple[int, _Peaks]:
    peaks = _Peaks(engine.store)
    samplers = [asyncio.create_task(peaks.sample()), asyncio.create_task(peaks.ping())]
    try:
        task = await engine.create(
            "flood",
            module="python",
            params={"target": f"{target}:flood", "kwargs": {"lines": lines, "every": every}},
        )
        execution_id = await engine.core.run(task.id)
        await engine.tick()
        async with asyncio.timeout(FLOOD_SEC * 4):
            await engine.runner.drain()
    finally:
        for sampler in samplers:
            sampler.cancel()
    return execution_id, peaks


@pytest.mark.slow  # 30,000 lines written to the store one by one
async def test_a_python_target_flood_stays_within_the_log_backlog(
    tmp_path: Path, flood_target: str
) -> None:
    """A head far larger than the backlog bound: the target is held at its awaits while
    the backlog is full, so what waits to be written never passes the bound by more than
    what it logs between two awaits, and every line is stored in order."""
    bound, every = 500, 10
    async with open_engine(
        tmp_path / "taskd.db",
        store_options={"log_entries_per_execution": 100_000, "log_backlog_entries": bound},
        extra_modules=[PythonModule()],
    ) as engine:
        execution_id, peaks = await _flood(engine, flood_target, 30_000, every)
        [execution] = await engine.executions((await engine.store.find_task("flood")).id)
        last = await engine.store.read_log(execution.task_id, offset=29_999)
    assert execution.id == execution_id
    assert (execution.status, execution.status_msg) == (ExecutionStatus.DONE, "flooded")
    assert bound < peaks.backlog <= bound + every
    assert [entry.msg for entry in last] == ["30000", "done: flooded"]


@pytest.mark.slow  # a million log calls
async def test_a_python_target_logging_a_million_lines_keeps_memory_bounded(
    tmp_path: Path, flood_target: str
) -> None:
    """1,000,000 lines from a python target with the default limits: the stored log is
    its head, the marker and its tail; the backlog stays within its bound, this process's
    RSS grows by less than 50 MB, and the store answers pings all along."""
    async with open_engine(tmp_path / "taskd.db", extra_modules=[PythonModule()]) as engine:
        execution_id, peaks = await _flood(engine, flood_target, 1_000_000, 1000)
        task = await engine.store.find_task("flood")
        assert task is not None
        entries = await engine.store.read_log(task.id, execution_id=execution_id, limit=5000)
    assert len(entries) == 1000
    assert entries[500].msg == "... 999002 lines left out ..."
    assert entries[-2].msg == "1000000"
    assert peaks.backlog <= 8192
    assert peaks.rss - peaks.rss_start < 50 * 1024 * 1024, peaks.rss - peaks.rss_start
    assert peaks.pings > 0

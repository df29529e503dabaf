"""`ExecutionContext`: what one running execution's module sees, backed by the store.

Log lines and progress are batched into the store's next write (`*_nowait`); saved state is
committed before `save_state` returns. Pause and stop are cooperative: the runner sets them
here, the module sees them at `checkpoint()` and in `stopping`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from taskd.clock import Clock
from taskd.model import Job
from taskd.modules.base import LogLevel, ModuleContext
from taskd.processes import process_start
from taskd.store import Store


class ExecutionContext(ModuleContext):
    """The `ModuleContext` of one execution, backed by the store."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        job: Job,
        params: Mapping[str, Any],
        stop_grace_sec: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._job = job
        self.task_id = job.task.id
        self.task_name = job.task.name
        self.execution_id = job.execution_id
        self.params = params
        self.trigger = job.trigger
        self.state = job.task.state
        workflow_action = job.task.spec.get("workflow_action")
        self.workflow_action = workflow_action if isinstance(workflow_action, str) else None
        self.task_options = job.task.options.to_json()
        self.stop_grace_sec = stop_grace_sec
        self._paused = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopping = asyncio.Event()
        self._percent: float | None = None

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping.is_set()

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._paused.is_set()

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Append a task log entry (batched)."""
        self._store.log_nowait(
            self.task_id,
            self.execution_id,
            str(level),
            msg,
            self._clock.now(),
            self._percent,
        )

    @property
    def log_full(self) -> bool:
        """True while the store's log backlog is over its bound."""
        return self._store.log_full

    async def wait_log_room(self) -> None:
        """Return once the store's log backlog is below its bound."""
        await self._store.wait_log_room()

    def log_keeps_last(self) -> int | None:
        """The store's answer for this execution (see `Store.log_keeps_last`)."""
        return self._store.log_keeps_last(self.execution_id)

    def log_left_out(self, count: int) -> None:
        """Count entries as left out (see `Store.log_left_out_nowait`)."""
        self._store.log_left_out_nowait(self.execution_id, count)

    async def record_process_group(self, pgid: int) -> None:
        """Record the process group with its leader's start (guards against pid reuse)."""
        start = process_start(pgid)
        if start is None:  # gone already: nothing could survive taskd
            return
        await self._store.record_process_group(self.execution_id, pgid, start)

    def progress(
        self,
        *,
        percent: float | None = None,
        size_todo: int | None = None,
        size_done: int | None = None,
        nodes_todo: int | None = None,
        nodes_done: int | None = None,
        bandwidth: float | None = None,
    ) -> None:
        """Record progress (batched); only given fields change."""
        fields: dict[str, Any] = {
            name: value
            for name, value in (
                ("progress", percent),
                ("size_todo", size_todo),
                ("size_done", size_done),
                ("nodes_todo", nodes_todo),
                ("nodes_done", nodes_done),
                ("bandwidth", bandwidth),
            )
            if value is not None
        }
        if percent is not None:
            self._percent = percent
        self._store.progress_nowait(self.execution_id, self.task_id, fields)

    async def save_state(self, state: Mapping[str, Any]) -> None:
        """Persist module state for a later resume; returns after commit."""
        self.state = dict(state)
        await self._store.save_state(self.task_id, self.state)

    async def checkpoint(self) -> None:
        """Block while paused."""
        await self._resumed.wait()

    async def wait_paused(self) -> None:
        """Return once paused."""
        await self._paused.wait()

    async def wait_resumed(self) -> None:
        """Return once not paused."""
        await self._resumed.wait()

    async def wait_stopping(self) -> None:
        """Return once a stop was requested."""
        await self._stopping.wait()

    def request_stop(self) -> None:
        """Ask the module to stop (it sees `stopping`); a paused module is let run to see it."""
        self._stopping.set()
        self.set_paused(False)

    def set_paused(self, paused: bool) -> None:
        """Pause (modules block at `checkpoint`) or resume."""
        if paused:
            self._resumed.clear()
            self._paused.set()
        else:
            self._paused.clear()
            self._resumed.set()

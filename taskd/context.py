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
from taskd.modules.params import scrub
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
        secrets: tuple[str, ...] = (),
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
        self._is_paused = False
        self._is_stopping = False
        # Made when a module first waits on them: most executions never pause nor stop,
        # and three Events per execution were a tenth of the runner's CPU per run.
        self._paused: asyncio.Event | None = None
        self._resumed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._percent: float | None = None
        # The params' secret strings (`params.secret_values`): masked in what is logged.
        self._secrets = secrets

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._is_stopping

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._is_paused

    def _paused_event(self) -> asyncio.Event:
        if self._paused is None:
            self._paused = asyncio.Event()
            if self._is_paused:
                self._paused.set()
        return self._paused

    def _resumed_event(self) -> asyncio.Event:
        if self._resumed is None:
            self._resumed = asyncio.Event()
            if not self._is_paused:
                self._resumed.set()
        return self._resumed

    def _stopping_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
            if self._is_stopping:
                self._stopping.set()
        return self._stopping

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Append a task log entry (batched), the params' secret values masked in it."""
        if self._secrets:
            msg = self.scrubbed(msg)
        self._store.log_nowait(
            self.task_id,
            self.execution_id,
            str(level),
            msg,
            self._clock.now(),
            self._percent,
        )

    def scrubbed(self, text: str) -> str:
        """`text` with every secret value of the params replaced by `SECRET_MASK` (a command
        that prints its token, an error that quotes the URL it failed on)."""
        result: str = scrub(text, self._secrets)
        return result

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
        if self._is_paused:
            await self._resumed_event().wait()

    async def wait_paused(self) -> None:
        """Return once paused."""
        await self._paused_event().wait()

    async def wait_resumed(self) -> None:
        """Return once not paused."""
        await self._resumed_event().wait()

    async def wait_stopping(self) -> None:
        """Return once a stop was requested."""
        await self._stopping_event().wait()

    def request_stop(self) -> None:
        """Ask the module to stop (it sees `stopping`); a paused module is let run to see it."""
        self._is_stopping = True
        if self._stopping is not None:
            self._stopping.set()
        self.set_paused(False)

    def set_paused(self, paused: bool) -> None:
        """Pause (modules block at `checkpoint`) or resume."""
        self._is_paused = paused
        if paused:
            if self._resumed is not None:
                self._resumed.clear()
            if self._paused is not None:
                self._paused.set()
        else:
            if self._paused is not None:
                self._paused.clear()
            if self._resumed is not None:
                self._resumed.set()

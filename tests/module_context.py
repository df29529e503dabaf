"""`FakeContext`: a small, real, in-memory `ModuleContext` for running modules in tests.

It stands in for the runner: the test drives pause, resume and stop, and reads back what the
module logged, reported and saved. Waiting is event-driven, never polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskd.modules.base import LogLevel, ModuleContext, Trigger

# A hang detector for waits on the module under test, not a timing assertion.
WAIT_SEC = 2.0


@dataclass
class FakeContext:
    """A `ModuleContext` whose pause, resume and stop the test controls.

    A stop is not held up by a pause: `checkpoint()` returns once a stop is requested even
    while paused, so a module can save its state and return.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] | None = None
    stop_grace_sec: float = 0.2
    task_id: int = 1
    task_name: str = "test-task"
    execution_id: int = 1
    trigger: Trigger = field(default_factory=lambda: Trigger(kind="manual"))
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, msg)
    progress_reports: list[dict[str, Any]] = field(default_factory=list)
    saved_states: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._paused = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = asyncio.Event()
        self._unblocked = asyncio.Event()  # not paused, or stopping: checkpoints pass
        self._unblocked.set()
        self._logged = asyncio.Event()
        # Set while a checkpoint() blocks, so a test can tell the module is held there.
        self.held_at_checkpoint = asyncio.Event()

    # ---- What the test drives

    def pause(self) -> None:
        """Pause the execution, as the runner does on a `pause` action."""
        self._running.clear()
        self._paused.set()
        if not self.stopping:
            self._unblocked.clear()

    def resume(self) -> None:
        """Resume a paused execution."""
        self._paused.clear()
        self._running.set()
        self._unblocked.set()

    def stop(self) -> None:
        """Request a cooperative stop."""
        self._stopping.set()
        self._unblocked.set()

    def messages(self, level: LogLevel | str | None = None) -> list[str]:
        """The logged messages, in order; only those at `level` if given."""
        return [msg for lvl, msg in self.logs if level is None or lvl == str(level)]

    async def wait_for_log(self, predicate: Callable[[str], bool]) -> str:
        """Return the first logged message matching `predicate`, waiting up to WAIT_SEC."""
        async with asyncio.timeout(WAIT_SEC):
            while True:
                for message in self.messages():
                    if predicate(message):
                        return message
                self._logged.clear()
                await self._logged.wait()

    # ---- The ModuleContext protocol

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping.is_set()

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._paused.is_set()

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Record a log entry."""
        self.logs.append((str(LogLevel(level)), msg))
        self._logged.set()

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
        """Record the given progress fields."""
        fields = {
            "percent": percent,
            "size_todo": size_todo,
            "size_done": size_done,
            "nodes_todo": nodes_todo,
            "nodes_done": nodes_done,
            "bandwidth": bandwidth,
        }
        self.progress_reports.append({k: v for k, v in fields.items() if v is not None})

    async def save_state(self, state: Mapping[str, Any]) -> None:
        """Record the state, as committed."""
        self.saved_states.append(dict(state))

    async def checkpoint(self) -> None:
        """Block while paused, unless a stop is requested."""
        if not self._unblocked.is_set():
            self.held_at_checkpoint.set()
            try:
                await self._unblocked.wait()
            finally:
                self.held_at_checkpoint.clear()

    async def wait_paused(self) -> None:
        """Return once paused."""
        await self._paused.wait()

    async def wait_resumed(self) -> None:
        """Return once not paused."""
        await self._running.wait()

    async def wait_stopping(self) -> None:
        """Return once a stop was requested."""
        await self._stopping.wait()


def _conforms(ctx: FakeContext) -> ModuleContext:
    # A static check (mypy) that FakeContext implements the protocol.
    return ctx

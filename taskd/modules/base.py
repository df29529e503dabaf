"""The module contract: what a task module is and what it may ask of the runner.

A module is an object with a `name`, a `description` (`{"en-US": ..., "de-DE": ...}`), a
`params` list in the fylr `config_def` form, and `async def run(ctx)`. The runner hands each
execution a fresh `ModuleContext`.

How an execution ends is decided from how `run` ends:
- returns (None or a short status message): `done`, or `canceled` if a stop was requested;
- raises `ModuleError(message)` or any other exception: `error` with the message;
- is cancelled by the runner (forced stop, timeout): `canceled` / `error` ("timed out").
A module that starts processes must kill them when it is cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from taskd.errors import TaskdError
from taskd.model import Trigger

__all__ = ["LogLevel", "Module", "ModuleContext", "ModuleError", "Trigger"]


class LogLevel(StrEnum):
    """Levels of task log entries."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ModuleError(TaskdError):
    """Raised by a module to end its execution in `error` with a clear message."""


class ModuleContext(Protocol):
    """What a running module may use. One per execution; not shared between executions."""

    task_id: int
    task_name: str
    execution_id: int
    params: Mapping[str, Any]  # validated against the module's params, defaults filled in
    trigger: Trigger
    state: Mapping[str, Any] | None  # saved by an earlier, interrupted execution, or None
    workflow_action: str | None  # the task's Nodeum `workflow_action`, if it has one
    task_options: Mapping[str, Any]  # the task's `options` (stored form, defaults filled in)
    stop_grace_sec: float  # how long a cooperative stop may take before it is forced

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: finish up, save state and return soon."""
        ...

    @property
    def paused(self) -> bool:
        """True while the execution is paused."""
        ...

    def log(self, level: LogLevel | str, msg: str) -> None:
        """Append an entry to the task log. Never blocks; entries are written in batches."""
        ...

    @property
    def log_full(self) -> bool:
        """True while the task log takes entries faster than they can be written.

        `log` still takes entries then (it never blocks); a module that can wait - one
        reading a process's output - should stop reading and await `wait_log_room`.
        """
        ...

    async def wait_log_room(self) -> None:
        """Return once `log_full` is False (at once if it is)."""
        ...

    def log_keeps_last(self) -> int | None:
        """None while every entry logged is kept; K once the log keeps only the last K of
        what comes next (its head is full): a module with many lines at hand may then log
        only their last K and count the others with `log_left_out`."""
        ...

    def log_left_out(self, count: int) -> None:
        """Count `count` entries as logged and left out, without their text; only right for
        entries that at least `log_keeps_last()` later ones follow."""
        ...

    async def record_process_group(self, pgid: int) -> None:
        """Record, durably, the process group this execution started (its leader's pid).

        Should taskd die without ending it (kill -9), the next start ends what is left of
        the group before it marks the run interrupted and retries it. Waits for commit.
        """
        ...

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
        """Report progress; only the given fields change. Never blocks."""
        ...

    async def save_state(self, state: Mapping[str, Any]) -> None:
        """Persist `state` (JSON) so a resumed execution continues from it. Waits for commit."""
        ...

    async def checkpoint(self) -> None:
        """A safe point: blocks while the execution is paused; returns at once otherwise."""
        ...

    async def wait_paused(self) -> None:
        """Return once the execution is paused (immediately if it already is)."""
        ...

    async def wait_resumed(self) -> None:
        """Return once the execution is not paused (immediately if it is not)."""
        ...

    async def wait_stopping(self) -> None:
        """Return once a stop was requested (immediately if one was)."""
        ...


@runtime_checkable
class Module(Protocol):
    """A task module. Third-party modules register under the entry-point group `taskd.modules`.

    `params` is the fylr `config_def` list: each item has `name`, `type` and optionally
    `default`, `required` (taskd's addition) and type-specific keys (`options` for `select`).
    """

    name: str
    description: Mapping[str, str]
    params: list[dict[str, Any]]

    async def run(self, ctx: ModuleContext) -> str | None:
        """Do the work; return None or a short status message. See the module docstring."""
        ...

"""Helpers for testing taskd and modules written for it: a fake clock, a fake module context.

For module authors::

    from taskd.testing import FakeContext

    async def test_my_module_logs_its_work() -> None:
        ctx = FakeContext.for_module(MyModule(), {"path": "/srv/data"})
        assert await MyModule().run(ctx) is None
        assert ctx.messages("info") == ["copied 3 files"]

`FakeContext` stands in for the runner: the test drives pause, resume and stop and reads back
what the module logged, reported and saved. `FakeClock` is a `taskd.clock.Clock` whose time
the test sets. `wait_until` bounds a wait on a condition that has no event to wait on.
`slow_callbacks` records every callback that held the event loop too long, so a test can
fail when a module does blocking work on the loop.

Every wait here ends as soon as what it waits for happens, and is bounded (`WAIT_SEC` unless
given): a hang detector, not a timing assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from taskd.clock import Clock
from taskd.modules.base import LogLevel, Module, ModuleContext, Trigger
from taskd.modules.registry import ModuleRegistry

__all__ = [
    "DEFAULT_START",
    "SLOW_CALLBACK_SEC",
    "WAIT_SEC",
    "FakeClock",
    "FakeContext",
    "slow_callbacks",
    "wait_until",
]

WAIT_SEC = 2.0
"""How long the helpers here wait for something before failing (a hang detector)."""

SLOW_CALLBACK_SEC = 0.05
"""How long one callback may hold the event loop before `slow_callbacks` reports it."""

DEFAULT_START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
"""Where a stopped `FakeClock` starts unless told: a Monday, 10:00 UTC, on a quarter hour."""


class FakeClock:
    """A `taskd.clock.Clock` whose time the test moves.

    Stopped (the default): the wall clock reads `start` and moves only when the test calls
    `set`, `advance` or `jump`; the monotonic clock starts at 1000.0 and moves only with
    `advance`. For tests that drive `Scheduler.tick(now)` themselves.

    Running (`FakeClock.running()`): both clocks follow the machine's clocks, plus whatever
    the test added with the same three methods. For live parts whose loops must see time
    pass, in tests that still need to be days ahead (a deferred run that expires).

    In both modes the monotonic clock ignores `set` and `jump`, as a real machine's monotonic
    clock ignores a change of its wall clock, and `sleep` sleeps real time (taskd's engine
    does not sleep through its clock).
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        """A stopped clock reading `start` (aware; converted to UTC)."""
        self._running = False
        self._wall_base = _aware_utc(start)
        self._wall_offset = timedelta()
        self._monotonic_base = 1000.0
        self._monotonic_offset = 0.0

    @classmethod
    def running(cls) -> FakeClock:
        """A clock that follows the machine's clocks until the test moves it."""
        clock = cls()
        clock._running = True
        clock._monotonic_base = 0.0
        return clock

    def now(self) -> datetime:
        """Return the current wall time (aware UTC)."""
        base = datetime.now(UTC) if self._running else self._wall_base
        return base + self._wall_offset

    def monotonic(self) -> float:
        """Return the monotonic reading in seconds (for durations only)."""
        base = time.monotonic() if self._running else self._monotonic_base
        return base + self._monotonic_offset

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of real time (never negative); cancellable."""
        await asyncio.sleep(max(0.0, seconds))

    def set(self, when: datetime) -> None:
        """Set the wall clock to `when` (aware); it may go backwards, as a clock being set.

        A running clock keeps running from there. Raises `ValueError` for a naive `when`.
        """
        self._wall_offset += _aware_utc(when) - self.now()

    def advance(self, delta: float | timedelta) -> None:
        """Let `delta` (seconds or a timedelta) pass on both clocks."""
        seconds = _seconds(delta)
        self._wall_offset += timedelta(seconds=seconds)
        self._monotonic_offset += seconds

    def jump(self, delta: float | timedelta) -> None:
        """Move the wall clock only by `delta` (an NTP step, a resumed virtual machine)."""
        self._wall_offset += timedelta(seconds=_seconds(delta))


@dataclass
class FakeContext:
    """A `taskd.modules.base.ModuleContext` whose pause, resume and stop the test controls.

    It records what the module logs (`logs`, `messages()`), reports (`progress_reports`)
    and saves (`saved_states`). A stop is not held up by a pause: `checkpoint()` returns once
    a stop is requested even while paused, so a module can save its state and return.
    `params` are used as given: build the context with `for_module` to have them validated
    and their defaults filled in, as the runner does.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] | None = None
    workflow_action: str | None = None
    task_options: Mapping[str, Any] = field(default_factory=dict)
    stop_grace_sec: float = 0.2
    task_id: int = 1
    task_name: str = "test-task"
    execution_id: int = 1
    trigger: Trigger = field(default_factory=lambda: Trigger(kind="manual"))
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, msg)
    progress_reports: list[dict[str, Any]] = field(default_factory=list)
    saved_states: list[dict[str, Any]] = field(default_factory=list)

    process_groups: list[int] = field(default_factory=list)  # record_process_group calls
    log_waits: int = 0  # how often the module waited for room in the log (`wait_log_room`)
    keeps_last: int | None = None  # what `log_keeps_last` answers (None: every entry kept)
    left_out: int = 0  # entries counted with `log_left_out`

    def __post_init__(self) -> None:
        self._log_room = asyncio.Event()  # cleared by `fill_log`, set by `drain_log`
        self._log_room.set()
        self._paused = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._stopping = asyncio.Event()
        self._unblocked = asyncio.Event()  # not paused, or stopping: checkpoints pass
        self._unblocked.set()
        self._logged = asyncio.Event()
        self.held_at_checkpoint = asyncio.Event()
        """Set while a `checkpoint()` blocks, so a test can tell the module is held there."""

    @classmethod
    def for_module(
        cls, module: Module, raw_params: Mapping[str, Any] | None = None, **fields: Any
    ) -> FakeContext:
        """A context holding `raw_params` validated for `module`, defaults filled in.

        Validation is the daemon's own (`ModuleRegistry.validate`, the module's
        `check_params` included). `fields` set the other attributes (`state=...`).
        Raises `ValueError` if the module itself is malformed (its name, description or
        param definitions) and `taskd.errors.ValidationError` if the params are refused.
        """
        params = ModuleRegistry([module]).validate(module.name, dict(raw_params or {}))
        return cls(params=params, **fields)

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

    def fill_log(self) -> None:
        """Make the log full (`log_full`), as a store whose writer fell behind."""
        self._log_room.clear()

    def drain_log(self) -> None:
        """Make the log take entries again; modules waiting in `wait_log_room` go on."""
        self._log_room.set()

    def messages(self, level: LogLevel | str | None = None) -> list[str]:
        """The logged messages, in order; only those at `level` if given."""
        return [msg for lvl, msg in self.logs if level is None or lvl == str(level)]

    async def wait_for_log(
        self, predicate: Callable[[str], bool], *, timeout_sec: float = WAIT_SEC
    ) -> str:
        """Return the first logged message matching `predicate`.

        Waits for new entries (no polling); raises `TimeoutError` after `timeout_sec`.
        """
        async with asyncio.timeout(timeout_sec):
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
        """Record a log entry; raises `ValueError` for an unknown level."""
        self.logs.append((str(LogLevel(level)), msg))
        self._logged.set()

    @property
    def log_full(self) -> bool:
        """True between `fill_log` and `drain_log`."""
        return not self._log_room.is_set()

    async def wait_log_room(self) -> None:
        """Count the wait (`log_waits`), then return once the log is not full."""
        self.log_waits += 1
        await self._log_room.wait()

    def log_keeps_last(self) -> int | None:
        """`keeps_last` (None unless the test sets it)."""
        return self.keeps_last

    def log_left_out(self, count: int) -> None:
        """Add `count` to `left_out`."""
        self.left_out += count

    async def record_process_group(self, pgid: int) -> None:
        """Record the process group id (`process_groups`)."""
        self.process_groups.append(pgid)

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
        """Record the given progress fields (one dict per call, without the Nones)."""
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
        """Record a copy of the state, as committed."""
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


async def wait_until(
    check: Callable[[], object | Awaitable[object]],
    *,
    timeout_sec: float = WAIT_SEC,
    poll_sec: float = 0.005,
) -> None:
    """Return once `check()` (a function or a coroutine function) gives a true value.

    Polls every `poll_sec`; raises `TimeoutError` after `timeout_sec`. Only for conditions
    nothing signals (a row written in a batch, a process gone): what can be awaited as an
    event should be.
    """
    async with asyncio.timeout(timeout_sec):
        while True:
            value = check()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return
            await asyncio.sleep(poll_sec)


@contextmanager
def slow_callbacks(
    threshold_sec: float = SLOW_CALLBACK_SEC, *, loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[list[str]]:
    """Record every callback that holds the event loop `threshold_sec` or longer; yield the
    list the reports go into.

    Each report names the task or handle and how long it took (`"Executing <Task ...> took
    0.212 seconds (0.201 s holding the loop)"`). "Holding" is the callback's wall time less
    the time its thread spent runnable but waiting for a CPU (Linux's per-thread run delay),
    so a callback merely preempted on a busy machine is not reported, while one that
    computes or blocks in a system call is. Where the run delay cannot be read, wall time
    counts. `loop` is accepted for compatibility; every loop in this process is watched.
    """
    del loop
    reports: list[str] = []
    original = asyncio.Handle._run

    def timed_run(handle: asyncio.Handle) -> None:
        started, waited = time.perf_counter(), _run_delay_sec()
        try:
            original(handle)
        finally:
            took = time.perf_counter() - started
            if took >= threshold_sec:
                held = took - (_run_delay_sec() - waited)
                if held >= threshold_sec:
                    reports.append(
                        f"Executing {_describe_handle(handle)} took {took:.3f} seconds "
                        f"({held:.3f} s holding the loop)"
                    )

    asyncio.Handle._run = timed_run  # type: ignore[method-assign, assignment]
    try:
        yield reports
    finally:
        asyncio.Handle._run = original  # type: ignore[method-assign]


def _run_delay_sec() -> float:
    """Seconds this thread has spent runnable but not running (0 where Linux's schedstat
    is not available)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _describe_handle(handle: asyncio.Handle) -> str:
    """The task a handle steps (its coroutine shows), else the handle itself."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


def _aware_utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"the clock speaks aware datetimes only, not {when!r}")
    return when.astimezone(UTC)


def _seconds(delta: float | timedelta) -> float:
    return delta.total_seconds() if isinstance(delta, timedelta) else float(delta)


def _conforms(clock: FakeClock, ctx: FakeContext) -> tuple[Clock, ModuleContext]:
    # A static check (mypy) that the fakes implement their protocols.
    return clock, ctx

"""Builders for tests of the scheduler, the runner and the core, all real parts.

`open_engine` wires a real SQLite `Store` (in a temporary directory), the real `Runner`,
`Scheduler` and `Core` with a `FakeClock` (from `taskd.testing`) and a `GateModule` the
test controls. The scheduler's loop is not started unless asked for: tests drive it with
`Engine.tick(when)`, which sets the fake clock and runs one step, so what is due is decided
by the test alone.

Waits are bounded by `WAIT_SEC`, a hang detector rather than a timing assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from taskd.core import Core
from taskd.engine import EngineSettings, build_engine
from taskd.model import Execution, Task, TaskSource
from taskd.modules.base import Module, ModuleContext, ModuleError
from taskd.modules.registry import ModuleRegistry
from taskd.modules.shell import ShellModule
from taskd.modules.sleep import SleepModule
from taskd.runner import RunEvents, Runner
from taskd.scheduler import Scheduler, SchedulerSettings
from taskd.store import Store
from taskd.store.sqlite import SqliteStore
from taskd.testing import DEFAULT_START, FakeClock, wait_until

WAIT_SEC = 1.5

# A Monday, on a quarter hour: every-15-minutes schedules have a slot here.
T0 = DEFAULT_START
QUARTER = timedelta(minutes=15)
EVERY_15_MIN = [{"interval_sec": 900}]


def at(offset_sec: float) -> datetime:
    """T0 plus `offset_sec` seconds."""
    return T0 + timedelta(seconds=offset_sec)


@dataclass(eq=False)
class Call:
    """One call of `GateModule.run`: its context and the test's handles on it."""

    ctx: ModuleContext
    release: asyncio.Event = field(default_factory=asyncio.Event)
    checkpoint_passed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str = "running"  # "returned", "stopped", "raised", "cancelled"

    @property
    def label(self) -> str:
        """The task's `label` param."""
        return str(self.ctx.params["label"])

    async def wait_finished(self) -> None:
        """Return once `run` has ended, within WAIT_SEC."""
        async with asyncio.timeout(WAIT_SEC):
            await self.finished.wait()


class GateModule:
    """A module that records its calls and blocks until the test releases it.

    Each call waits for `Call.release` (or a stop request, unless `ignore_stop`), passes a
    checkpoint (so a pause holds it), then: saves `save_state` and returns None if a stop
    was requested; raises `ModuleError(fail)` or `RuntimeError(crash)` if set; else returns
    `result` (None by default). With `auto`, it does not wait for a release.
    """

    name = "gate"
    description: Mapping[str, str] = {"en-US": "Test gate.", "de-DE": "Test-Schranke."}
    params: list[dict[str, Any]] = [  # noqa: RUF012 (read-only by contract)
        {"name": "label", "type": "text", "default": ""},
        {"name": "auto", "type": "bool", "default": False},
        {"name": "fail", "type": "text"},
        {"name": "crash", "type": "text"},
        {"name": "result", "type": "text"},
        {"name": "ignore_stop", "type": "bool", "default": False},
        {"name": "percent", "type": "float"},
        {"name": "save_state", "type": "json", "schema": "object"},
    ]

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.active = 0
        self.max_active = 0
        self._changed = asyncio.Event()

    async def run(self, ctx: ModuleContext) -> str | None:
        """Wait for the test; see the class docstring."""
        params = ctx.params
        call = Call(ctx=ctx)
        self.calls.append(call)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._changed.set()
        try:
            if params["percent"] is not None:
                ctx.progress(percent=params["percent"])
            if not params["auto"]:
                waits = [asyncio.ensure_future(call.release.wait())]
                if not params["ignore_stop"]:
                    waits.append(asyncio.ensure_future(ctx.wait_stopping()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waits:
                        waiter.cancel()
            await ctx.checkpoint()
            call.checkpoint_passed.set()
            if ctx.stopping and not params["ignore_stop"]:
                if params["save_state"] is not None:
                    await ctx.save_state(params["save_state"])
                call.ended = "stopped"
                return None
            if params["fail"] is not None:
                call.ended = "raised"
                raise ModuleError(params["fail"])
            if params["crash"] is not None:
                call.ended = "raised"
                raise RuntimeError(params["crash"])
            call.ended = "returned"
            result: str | None = params["result"]
            return result
        except asyncio.CancelledError:
            call.ended = "cancelled"
            raise
        finally:
            self.active -= 1
            call.finished.set()
            self._changed.set()

    async def wait_calls(self, count: int, *, timeout_sec: float = WAIT_SEC) -> list[Call]:
        """Return the calls once there are at least `count`, within `timeout_sec`."""
        async with asyncio.timeout(timeout_sec):
            while len(self.calls) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.calls

    def labels(self) -> list[str]:
        """The `label` of every call, in call order."""
        return [call.label for call in self.calls]


@dataclass(eq=False)
class Engine:
    """The real store, runner, scheduler and core around a fake clock and a gate module."""

    store: Store
    runner: Runner
    scheduler: Scheduler
    core: Core
    clock: FakeClock
    gate: GateModule
    events: RunEvents

    async def create(
        self,
        name: str = "job",
        *,
        module: str = "gate",
        params: Mapping[str, Any] | None = None,
        source: TaskSource = TaskSource.API,
        **fields: Any,
    ) -> Task:
        """Validate and create a task through the core (`fields` as in an API body)."""
        raw = {"name": name, "task_module": module, "task_params": dict(params or {}), **fields}
        return await self.core.create_task(self.core.validate(raw), source=source)

    async def tick(self, when: datetime | None = None) -> None:
        """Set the clock to `when` (if given) and run one scheduler step there."""
        if when is not None:
            self.clock.set(when)
        await self.scheduler.tick(self.clock.now())
        await settle(self.store)

    async def task(self, task_id: int) -> Task:
        """Read a task back from the store."""
        return await self.store.get_task(task_id)

    async def executions(self, task_id: int) -> list[Execution]:
        """The task's execution rows, oldest first (after pending writes committed)."""
        await settle(self.store)
        return list(reversed(await self.store.list_executions(task_id, limit=10_000)))

    async def drain(self) -> None:
        """Wait until the runner has nothing queued or running, within WAIT_SEC."""
        async with asyncio.timeout(WAIT_SEC):
            await self.runner.drain()
        await settle(self.store)

    async def finished(self, execution_id: int) -> None:
        """Wait until a running execution has ended and was recorded, within WAIT_SEC."""
        async with asyncio.timeout(WAIT_SEC):
            await self.runner.wait_finished(execution_id)
        await settle(self.store)


async def settle(store: Store) -> None:
    """Let spawned bookkeeping (skipped rows, batched writes) reach the database."""
    for _ in range(3):
        await asyncio.sleep(0)
        await store.flush()


async def until(check: Callable[[], Any], *, timeout_sec: float = WAIT_SEC) -> None:
    """Wait until the (async) `check` returns a true value; bounded, polls every 5 ms.

    For conditions only the database can tell (a status written in a batch); anything the
    test can wait on as an event is waited on as an event.
    """
    await wait_until(check, timeout_sec=timeout_sec)


def registry(gate: GateModule, *extra: Module) -> ModuleRegistry:
    """The gate module with the real `sleep` and `shell` modules (and `extra`)."""
    return ModuleRegistry([gate, SleepModule(), ShellModule(), *extra])


@asynccontextmanager
async def open_engine(
    db_path: Path,
    *,
    clock: Any = None,
    max_running: int = 8,
    stop_grace_sec: float = 0.2,
    settings: SchedulerSettings | None = None,
    start: bool = False,
    store_options: Mapping[str, Any] | None = None,
    extra_modules: Sequence[Module] = (),
) -> AsyncIterator[Engine]:
    """Open a store at `db_path` and build the engine on it; tear it all down after.

    With `start`, `Scheduler.start()` runs (crash recovery, due index, the loop).
    `store_options` go to `SqliteStore.open` (its limits); `extra_modules` join the
    registry's gate, sleep and shell modules.
    """
    clock = clock if clock is not None else FakeClock()
    gate = GateModule()
    modules = registry(gate, *extra_modules)
    async with SqliteStore.open(db_path, **(store_options or {})) as store:
        built = build_engine(
            store=store,
            modules=modules,
            clock=clock,
            settings=EngineSettings(
                max_running=max_running,
                stop_grace_sec=stop_grace_sec,
                dispatcher="test-host",
                config_source="etc/test.toml",
                scheduler=settings or SchedulerSettings(),
            ),
        )
        runner, scheduler, core = built.runner, built.scheduler, built.core
        async with runner:
            engine = Engine(
                store=store,
                runner=runner,
                scheduler=scheduler,
                core=core,
                clock=clock,
                gate=gate,
                events=built.events,
            )
            try:
                if start:
                    await scheduler.start()
                yield engine
            finally:
                await scheduler.stop()
                for call in gate.calls:
                    call.release.set()
                await runner.shutdown(0)
                await settle(store)

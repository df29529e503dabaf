"""Wiring: the one function that builds the engine from its parts.

The daemon, the tests and the benchmarks all build the store-runner-scheduler-core graph
here, so each component gets its collaborators through its constructor and the observers
(metrics, notifications) subscribe to the runner's events in one place, in one order.
Lifecycles stay with the caller: the daemon starts the scheduler only after the API listens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from taskd.clock import Clock
from taskd.core import Core
from taskd.metrics import Metrics
from taskd.model import Outcome
from taskd.modules.registry import ModuleRegistry
from taskd.runner import RunEvents, Runner
from taskd.scheduler import Scheduler, SchedulerSettings
from taskd.store import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """What the engine needs to know of the config (`[daemon]`), with test-friendly defaults."""

    default_timezone: str = "UTC"
    max_running: int = 16
    stop_grace_sec: float = 10.0
    dispatcher: str | None = None  # the host name when None
    config_source: str = "the config file"  # named in "edit it there" refusals
    # False when other processes write the store too (cluster nodes over one PostgreSQL):
    # the API then caches no reads (`Core.sole_writer`).
    sole_writer: bool = True
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class Engine:
    """The engine's parts, wired. Enter `runner` before use; `scheduler.start()` to fire."""

    store: Store
    runner: Runner
    scheduler: Scheduler
    core: Core
    events: RunEvents
    metrics: Metrics
    clock: Clock
    modules: ModuleRegistry


def build_engine(
    *,
    store: Store,
    modules: ModuleRegistry,
    clock: Clock,
    settings: EngineSettings,
    on_ended: Sequence[Callable[[Outcome], object]] = (),
) -> Engine:
    """Build runner, scheduler, core and metrics on `store`; nothing runs yet.

    Metrics and the `on_ended` listeners (notifications) hear of each ending before the
    scheduler acts on it (starts a parked run, queues a retry), so what they count never
    lags behind what happens next.
    """
    events = RunEvents()
    runner = Runner(
        store=store,
        modules=modules,
        clock=clock,
        max_running=settings.max_running,
        stop_grace_sec=settings.stop_grace_sec,
        events=events,
        dispatcher=settings.dispatcher,
    )
    scheduler = Scheduler(
        store=store,
        runner=runner,
        clock=clock,
        settings=settings.scheduler,
    )
    metrics = Metrics(load=runner, monotonic=clock.monotonic)
    events.on_started(metrics.observe_started)
    events.on_ended(metrics.observe_outcome)
    for ended in on_ended:
        events.on_ended(ended)
    events.on_ended(scheduler.on_outcome)
    core = Core(
        store=store,
        scheduler=scheduler,
        runner=runner,
        modules=modules,
        clock=clock,
        default_timezone=settings.default_timezone,
        config_source=settings.config_source,
        sole_writer=settings.sole_writer,
    )

    def on_batch(seconds: float, writes: int) -> None:
        metrics.observe_batch(seconds, writes)
        core.committed()  # wakes the log followers: lines and endings are committed

    store.on_batch = on_batch
    return Engine(
        store=store,
        runner=runner,
        scheduler=scheduler,
        core=core,
        events=events,
        metrics=metrics,
        clock=clock,
        modules=modules,
    )

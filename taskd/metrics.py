"""Prometheus metrics: what taskd ran, how long and how late, its load, its store's writes.

`Metrics` keeps its own `CollectorRegistry` (never prometheus-client's global one), so
several apps in one process, tests among them, never share or collide on a metric. The
daemon feeds it from the runner's and the store's hooks (`observe_started`,
`observe_outcome`, `observe_batch`); the runner's queue depth and running count are read
when scraped. `GET /metrics` serves `render()`.

The hooks are called inside the runner's dispatch loop and the store's write loop, which
an exception would stop: every `observe_*` method only does arithmetic on what it is given
and never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from taskd import __version__
from taskd.model import Job, Outcome

# The text format `generate_latest` writes (Prometheus exposition format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Lateness is milliseconds when all is well: the low end is fine-grained, and a
# minute or more (a catch-up run, a full runner) is simply "very late".
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Executions last from milliseconds (a webhook) to hours (a backup).
DURATION_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0,
    21600.0, 86400.0,
)  # fmt: skip
# One group-commit batch: a few milliseconds on a healthy disk.
STORE_WRITE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Load(Protocol):
    """What the runner tells about its load (`taskd.runner.Runner` has both)."""

    @property
    def running_count(self) -> int:
        """How many executions run now."""
        ...

    @property
    def queued_count(self) -> int:
        """How many jobs wait for a free place."""
        ...


class Metrics:
    """taskd's metrics in a registry of their own; see the module docstring.

    `monotonic` measures execution durations (the runner's clock, so a fake clock in tests
    gives exact durations).
    """

    def __init__(
        self, *, load: Load, monotonic: Callable[[], float], version: str = __version__
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._monotonic = monotonic
        # When each running execution started (monotonic), by execution id, until its
        # outcome. An ending the store refused to record never reaches `on_outcome`, and
        # leaves its entry here: a few bytes, in a daemon whose disk fails.
        self._started: dict[int, float] = {}
        registry = self.registry
        self.executions = Counter(
            "taskd_executions",
            "Executions that ended, by task module and final status.",
            ["module", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskd_execution_duration_seconds",
            "How long executions ran: from the module's start until the ending was committed.",
            ["module"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "taskd_start_lateness_seconds",
            "How late executions started: from the time they were due until the module started.",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        queued = Gauge(
            "taskd_queue_depth",
            "Jobs due and waiting for a free place in the runner (max_running).",
            registry=registry,
        )
        queued.set_function(lambda: load.queued_count)
        running = Gauge(
            "taskd_running_executions",
            "Executions running now (paused ones included).",
            registry=registry,
        )
        running.set_function(lambda: load.running_count)
        self.store_write = Histogram(
            "taskd_store_write_seconds",
            "How long one store batch (a group commit of several writes) took to commit.",
            buckets=STORE_WRITE_BUCKETS,
            registry=registry,
        )
        self.store_writes = Counter(
            "taskd_store_writes",
            "Writes the store committed (each batch commits one or more).",
            registry=registry,
        )
        Info("taskd_build", "The running taskd.", registry=registry).info({"version": version})

    def observe_started(self, job: Job, lateness_sec: float) -> None:
        """Count a start `lateness_sec` after the job was due (`Runner.on_started`)."""
        self._started[job.execution_id] = self._monotonic()
        # A run asked for ahead of its due time starts "early": it was not late.
        self.lateness.observe(max(0.0, lateness_sec))

    def observe_outcome(self, outcome: Outcome) -> None:
        """Count an ending, with its duration when its start was seen (`Runner.on_outcome`).

        A job refused before its module started (its params no longer fit the module) has
        no start: it is counted, without a duration.
        """
        job = outcome.job
        module = job.task.module
        self.executions.labels(module=module, status=str(outcome.status)).inc()
        started = self._started.pop(job.execution_id, None)
        if started is not None:
            self.duration.labels(module=module).observe(max(0.0, self._monotonic() - started))

    def observe_batch(self, seconds: float, writes: int) -> None:
        """Count a committed store batch of `writes` writes (`Store.on_batch`)."""
        self.store_write.observe(max(0.0, seconds))
        self.store_writes.inc(max(0, writes))

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

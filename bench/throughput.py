"""Benchmark: no-op executions per second, sustained, with everything persisted.

Run by hand: `.venv/bin/python bench/throughput.py [--executions 20000] [--repeat 3]`.

A fresh state dir (real SQLite file) holds N tasks of a no-op module (`overlap = parallel`).
A driver keeps a window of manual runs in flight until `--executions` were started; each
execution's row, its `running` and `done` statuses and one log entry (the module calls
`ctx.log` once) are committed by taskd's store, with its default history pruning. The clock
stops when the runner is drained and the store has flushed. Afterwards the database is
checked with plain sqlite3: every execution ever inserted exists or was pruned by the history
limit, every remaining one is `done` with exactly one log entry. Target: >= 5,000/s.

Two paths, `--path`:
- `core` (default): `Core.run(task_id)` per execution, as the API's `run` action does
  (read the task, insert the row, `Scheduler.enqueue`, the scheduler's overlap check, then
  `Runner.submit`);
- `runner`: `Store.add_executions` for a batch of rows, then `Runner.submit` per job, as the
  scheduler does for due slots, without the scheduler.

Logging is configured as `taskd serve` does (JSON lines) into a file (`--log none`: off).
Per-thread CPU (event loop thread vs. the aiosqlite thread) is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    calibration_ms,
    configure_bench_logging,
    load_average,
    python_and_cpus,
    state_dir,
    thread_cpu_seconds,
)

from taskd.clock import SystemClock
from taskd.engine import EngineSettings, build_engine
from taskd.model import Job, Task, TaskSource, TriggerKind
from taskd.modules.base import ModuleContext, Trigger
from taskd.modules.registry import ModuleRegistry
from taskd.runner import Runner
from taskd.schedule import format_utc
from taskd.store import DB_FILE, NewExecution, Store, open_store
from taskd.taskspec import validate_task_spec

TARGET_LOOP_US = 100.0  # event-loop CPU per no-op execution (issue 11)
TARGET_PER_SEC = 5000.0
HISTORY_PER_TASK = 100  # taskd's default (`daemon.history_per_task`)


class NoopModule:
    """A module that logs one line and returns; it frees a window slot of the driver."""

    name: str
    description: Mapping[str, str]
    params: list[dict[str, Any]]

    def __init__(self) -> None:
        self.name = "noop"
        self.description = {"en-US": "Logs one line and returns."}
        self.params = []
        self.runs = 0
        self.window_free = 0
        self.window_event = asyncio.Event()

    async def run(self, ctx: ModuleContext) -> str | None:
        """Log once; hand a window slot back to the driver."""
        ctx.log("info", "noop")
        self.runs += 1
        self.window_free += 1
        self.window_event.set()
        return None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The figures of one run."""

    executions: int
    seconds: float
    per_sec: float
    main_cpu_sec: float  # CPU of the event loop thread during the run
    other_cpu_sec: float  # CPU of the other threads (aiosqlite's database thread)
    batches: int  # store transactions written during the run
    remaining_rows: int  # executions left after history pruning
    verified: bool
    load: float = 0.0  # 1-minute load average after the run


def task_spec(index: int) -> dict[str, Any]:
    """The stored JSON definition of benchmark task `index` (manual runs only)."""
    raw = {
        "name": f"tput-{index:05d}",
        "task_module": "noop",
        "options": {"overlap": "parallel"},
    }
    return validate_task_spec(
        raw, path="", default_timezone="UTC", known_modules={"noop"}
    ).to_json()


async def one_run(args: argparse.Namespace) -> RunResult:
    """Set up the tasks, drive `--executions` runs through taskd, verify the database."""
    with state_dir(args.keep, prefix="taskd-bench-throughput-") as directory:
        db_path = directory / DB_FILE
        result = await _drive(args, db_path)
        return _verify(db_path, args, result)


async def _drive(args: argparse.Namespace, db_path: Path) -> RunResult:
    clock = SystemClock()
    noop = NoopModule()
    modules = ModuleRegistry([noop])
    total = args.executions
    async with open_store(db_path.parent, history_per_task=HISTORY_PER_TASK) as store:
        now = clock.now()
        tasks = await asyncio.gather(
            *(
                store.insert_task(
                    name=f"tput-{i:05d}",
                    source=TaskSource.API,
                    spec=task_spec(i),
                    enabled=True,
                    next_run_at=None,
                    now=now,
                )
                for i in range(args.tasks)
            )
        )
        engine = build_engine(
            store=store,
            modules=modules,
            clock=clock,
            settings=EngineSettings(max_running=args.max_running, stop_grace_sec=1.0),
        )
        runner, scheduler, core = engine.runner, engine.scheduler, engine.core
        async with runner:
            await scheduler.start()
            in_flight: set[asyncio.Task[Any]] = set()
            failures: list[BaseException] = []

            def landed(launched: asyncio.Task[Any]) -> None:
                in_flight.discard(launched)
                error = None if launched.cancelled() else launched.exception()
                if error is not None:
                    failures.append(error)
                    noop.window_event.set()

            def launch(coroutine: Coroutine[Any, Any, Any]) -> None:
                launched = asyncio.create_task(coroutine)
                in_flight.add(launched)
                launched.add_done_callback(landed)

            noop.window_free = args.window
            noop.window_event.set()
            batches_before = store.batches_written
            cpu_before = thread_cpu_seconds(os.getpid(), threading.main_thread().native_id)
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter()
            submitted = 0
            deadline = started + args.timeout
            while submitted < total:
                await asyncio.wait_for(noop.window_event.wait(), deadline - time.perf_counter())
                count = min(noop.window_free, total - submitted)
                noop.window_free -= count
                noop.window_event.clear()
                chosen = [tasks[(submitted + i) % len(tasks)] for i in range(count)]
                submitted += count
                if args.path == "core":
                    for task in chosen:
                        launch(core.run(task.id))
                else:
                    launch(_submit_batch(store, runner, chosen, clock))
                if failures:
                    raise failures[0]
            while noop.runs < total:
                await asyncio.wait_for(noop.window_event.wait(), deadline - time.perf_counter())
                noop.window_event.clear()
                if failures:
                    raise failures[0]
            await asyncio.wait_for(runner.drain(), deadline - time.perf_counter())
            await store.flush()
            seconds = time.perf_counter() - started
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
                print(f"# cProfile of the timed run: {args.profile}")
            cpu_after = thread_cpu_seconds(os.getpid(), threading.main_thread().native_id)
            batches = store.batches_written - batches_before
            await scheduler.stop()
    return RunResult(
        executions=noop.runs,
        seconds=seconds,
        per_sec=noop.runs / seconds,
        main_cpu_sec=cpu_after[0] - cpu_before[0],
        other_cpu_sec=cpu_after[1] - cpu_before[1],
        batches=batches,
        remaining_rows=0,
        verified=False,
    )


async def _submit_batch(
    store: Store, runner: Runner, tasks: Sequence[Task], clock: SystemClock
) -> None:
    """Insert a batch of manual execution rows in one write, then hand the jobs to the runner."""
    now = clock.now()
    ids = await store.add_executions(
        [
            NewExecution(task_id=task.id, trigger=TriggerKind.MANUAL, scheduled_for=now)
            for task in tasks
        ],
        now,
    )
    for task, execution_id in zip(tasks, ids, strict=True):
        assert execution_id is not None
        trigger = Trigger(kind=TriggerKind.MANUAL, scheduled_for=format_utc(now))
        runner.submit(Job(execution_id=execution_id, task=task, trigger=trigger, due=now))


def _verify(db_path: Path, args: argparse.Namespace, result: RunResult) -> RunResult:
    """Check the database: all rows inserted, the rest pruned, each remaining `done` + 1 log."""
    cx = sqlite3.connect(db_path)
    try:
        inserted, remaining, done = cx.execute(
            "SELECT max(id), count(*), sum(status = 'done') FROM executions"
        ).fetchone()
        without_log = cx.execute(
            "SELECT count(*) FROM executions e WHERE (SELECT count(*) FROM log_entries l"
            " WHERE l.execution_id = e.id) != 1"
        ).fetchone()[0]
        orphan_logs = cx.execute(
            "SELECT count(*) FROM log_entries l WHERE NOT EXISTS"
            " (SELECT 1 FROM executions e WHERE e.id = l.execution_id)"
        ).fetchone()[0]
        over_history = cx.execute(
            "SELECT count(*) FROM (SELECT task_id FROM executions GROUP BY task_id"
            " HAVING count(*) > ?)",
            (HISTORY_PER_TASK + HISTORY_PER_TASK // 10,),
        ).fetchone()[0]
        not_done_tasks = cx.execute("SELECT count(*) FROM tasks WHERE status != 'done'").fetchone()[
            0
        ]
    finally:
        cx.close()
    problems = []
    if inserted != args.executions or result.executions != args.executions:
        problems.append(
            f"{inserted} rows inserted, {result.executions} runs, not {args.executions}"
        )
    if done != remaining:
        problems.append(f"{remaining - done} remaining executions are not done")
    if without_log:
        problems.append(f"{without_log} executions without exactly one log entry")
    if orphan_logs:
        problems.append(f"{orphan_logs} log entries without their execution")
    if over_history:
        problems.append(f"{over_history} tasks keep more than the history limit (+10%)")
    if not_done_tasks:
        problems.append(f"{not_done_tasks} tasks are not 'done'")
    for problem in problems:
        print(f"# VERIFY FAILED: {problem}")
    return RunResult(
        executions=result.executions,
        seconds=result.seconds,
        per_sec=result.per_sec,
        main_cpu_sec=result.main_cpu_sec,
        other_cpu_sec=result.other_cpu_sec,
        batches=result.batches,
        remaining_rows=remaining,
        verified=not problems,
        load=load_average(),
    )


HEADER = (
    f"{'execs':>7} {'seconds':>8} {'execs/s':>8} {'loop cpu s':>10} {'db cpu s':>9}"
    f" {'loop us/exec':>12} {'txns':>6} {'kept rows':>9} {'verified':>8} {'load':>5}"
)


def row(result: RunResult, label: str = "") -> str:
    """One table line."""
    return (
        f"{result.executions:>7} {result.seconds:>8.2f} {result.per_sec:>8.0f}"
        f" {result.main_cpu_sec:>10.2f} {result.other_cpu_sec:>9.2f}"
        f" {result.main_cpu_sec * 1e6 / result.executions:>12.1f} {result.batches:>6}"
        f" {result.remaining_rows:>9} {'yes' if result.verified else 'NO':>8}"
        f" {result.load:>5.2f}{label}"
    )


def main() -> None:
    """Parse the options, run `--repeat` times, print the table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=20_000, help="executions per run")
    parser.add_argument("--tasks", type=int, default=100, help="tasks the runs go round")
    parser.add_argument("--max-running", type=int, default=64, help="runner's max_running")
    parser.add_argument(
        "--window", type=int, default=0, help="runs in flight (default: 2 x max-running)"
    )
    parser.add_argument("--path", choices=("core", "runner"), default="core")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the median is printed)")
    parser.add_argument("--log", choices=("file", "none"), default="file")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after seconds")
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the event loop of the timed run (pstats)"
    )
    args = parser.parse_args()
    args.window = args.window or 2 * args.max_running

    print(
        f"# taskd throughput: {python_and_cpus()}, path={args.path}, executions={args.executions},"
        f" tasks={args.tasks}, max_running={args.max_running}, window={args.window},"
        f" history_per_task={HISTORY_PER_TASK}, log={args.log}, repeat={args.repeat},"
        f" calibration {calibration_ms():.0f} ms"
    )
    print(HEADER)
    results = []
    with (
        state_dir(keep=False, prefix="taskd-bench-log-") as log_dir,
        open(log_dir / "taskd.log", "w") as log_file,
    ):
        configure_bench_logging(args.log, log_file)
        for _ in range(args.repeat):
            result = asyncio.run(one_run(args))
            results.append(result)
            print(row(result), flush=True)
    median = statistics.median(r.per_sec for r in results)
    if args.repeat > 1:
        print(f"# median {median:.0f} executions/s over {args.repeat} runs")
    verdict = "PASS" if median >= TARGET_PER_SEC and all(r.verified for r in results) else "FAIL"
    print(f"# target >= {TARGET_PER_SEC:.0f}/s: {median:.0f}/s -> {verdict}")
    loop_us = statistics.median(r.main_cpu_sec * 1e6 / r.executions for r in results)
    verdict = "PASS" if loop_us <= TARGET_LOOP_US else "FAIL"
    print(
        f"# event-loop CPU per execution <= {TARGET_LOOP_US:.0f} us: {loop_us:.1f} us -> {verdict}"
    )


if __name__ == "__main__":
    main()

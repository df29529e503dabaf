"""Benchmark: how late K executions that share one due instant start.

Run by hand: `.venv/bin/python bench/fire_latency.py [--k 1,1000,10000] [--repeat 3]`.

For each K: a fresh state dir (real SQLite file), K tasks of a no-op module all due at the
same instant (a one-shot `next_run_at`, or an interval schedule whose slot is that instant),
`max_running = K`, and the real scheduler loop (`Scheduler.start()`), so slots are claimed
ahead by the look-ahead and only the coroutines start at the instant. The no-op module takes
`time.time()` as the first thing in `run()`; lateness = that - the due instant. Printed per
run: p50 / p99 / max lateness (max = the time until the last start), when the claim and the
runner's start batch happened relative to the instant (from the stored executions), the time
until every execution's end was committed, and the CPU time of the event loop thread from
just before the claim to the last start (other load on the machine inflates wall-clock
lateness; this much less). Target: p99 <= 5 ms at K = 1000.

`--api-load N`: the tasks are also served by the real API (`build_app` + `serve_api` on
127.0.0.1, with a key, in the benchmark's own event loop as in the daemon), and a second
process (`bench/_api_load.py`) keeps N connections reading `/api/v2/tasks?limit=L`
(`--api-limit`, 100) as fast as the answers come, from before the instant until every
execution is committed (bounded: it stops by itself after `lead + timeout`). Printed per run
besides: the load's requests, answers per status (503: over `max_in_flight`) and its
latency p50 / p99; executions `skipped` are counted (target: none).

Logging is configured as `taskd serve` does (JSON lines), written to a temporary file
(`--log none` turns it off), since a real daemon pays for its per-execution log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import math
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    calibration_ms,
    configure_bench_logging,
    load_average,
    percentile,
    python_and_cpus,
    state_dir,
)

from taskd.api.app import build_app, serve_api
from taskd.api.auth import Authenticator, new_key
from taskd.clock import SystemClock, from_micros
from taskd.engine import Engine, EngineSettings, build_engine
from taskd.model import TaskSource
from taskd.modules.base import ModuleContext
from taskd.modules.registry import ModuleRegistry
from taskd.schedule import format_utc
from taskd.scheduler import SchedulerSettings
from taskd.settings import ApiKeyRef, ApiSettings, ListenAddress
from taskd.store import DB_FILE, open_store
from taskd.taskspec import validate_task_spec

DEFAULT_K = (1, 1000, 10000)
TARGET_P99_MS = 5.0
TARGET_K = 1000
INTERVAL_SEC = 3600
SETUP_ATTEMPTS = 4
CPU_MARK_BEFORE_SEC = 0.25  # the loop's CPU is read this long before the instant
INSTANT_MARK_BEFORE_SEC = 0.002  # "us/start": loop CPU from here to the last start, per start


class NoopModule:
    """A module that only notes when its `run()` was entered (wall time, `time.time()`)."""

    name: str
    description: Mapping[str, str]
    params: list[dict[str, Any]]

    def __init__(self, expected: int, hold_sec: float = 0.0) -> None:
        self.name = "noop"
        self.description = {"en-US": "Does nothing; notes the wall time its run() was entered."}
        self.params = []
        self.expected = expected
        self.hold_sec = hold_sec
        self.entered: list[float] = []
        self.last_cpu = 0.0  # event loop thread's CPU time when the last one entered
        self.all_entered = asyncio.Event()

    async def run(self, ctx: ModuleContext) -> str | None:
        """Record the entry time; nothing else."""
        self.entered.append(time.time())
        if len(self.entered) >= self.expected:
            self.last_cpu = time.thread_time()
            self.all_entered.set()
        if self.hold_sec:
            await asyncio.sleep(self.hold_sec)
        return None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The figures of one run (milliseconds relative to the due instant unless noted)."""

    k: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    claim_ms: float  # when the claim began (the rows' queued_at), relative to the instant
    runner_start_ms: float  # latest `started_at` the runner recorded
    all_committed_ms: float  # every execution `done` in the store
    lead_ms: float  # how far ahead of the instant the scheduler was started
    done_rows: int
    loop_cpu_ms: float  # event loop CPU from just before the claim to the last start
    start_cpu_us: float  # event loop CPU from just before the instant to the last start, / K
    load: float  # 1-minute load average after the run
    skipped: int = 0  # executions recorded as skipped
    api: str = ""  # the API load's summary (JSON), with --api-load


def task_spec(index: int, schedule: str, due: datetime) -> dict[str, Any]:
    """The stored JSON definition of benchmark task `index`, validated like an API body."""
    raw: dict[str, Any] = {"name": f"fire-{index:06d}", "task_module": "noop"}
    if schedule == "interval":
        raw["schedules"] = [{"interval_sec": INTERVAL_SEC, "start_at": format_utc(due)}]
    else:
        raw["next_run_at"] = format_utc(due)
    return validate_task_spec(
        raw, path="", default_timezone="UTC", known_modules={"noop"}
    ).to_json()


async def gather_chunked(coroutines: Iterator[Any], chunk: int = 1000) -> None:
    """Await coroutines `chunk` at a time (the store group-commits each chunk)."""
    while True:
        batch = [c for _, c in zip(range(chunk), coroutines, strict=False)]
        if not batch:
            return
        await asyncio.gather(*batch)


async def one_run(k: int, args: argparse.Namespace) -> RunResult:
    """Set up K tasks due at one instant, run the real scheduler, measure the starts."""
    with state_dir(args.keep, prefix="taskd-bench-fire-") as directory:
        return await _measure(k, args, directory)


async def _measure(k: int, args: argparse.Namespace, directory: Path) -> RunResult:
    clock = SystemClock()
    noop = NoopModule(k, args.hold)
    modules = ModuleRegistry([noop])
    db_path = directory / DB_FILE
    async with open_store(db_path.parent) as store, contextlib.AsyncExitStack() as stack:
        placeholder = datetime(2030, 1, 1, tzinfo=UTC)
        now = clock.now()
        tasks = []
        for start in range(0, k, 1000):
            tasks += await asyncio.gather(
                *(
                    store.insert_task(
                        name=f"fire-{i:06d}",
                        source=TaskSource.API,
                        spec=task_spec(i, args.schedule, placeholder),
                        enabled=True,
                        next_run_at=None,
                        now=now,
                    )
                    for i in range(start, min(k, start + 1000))
                )
            )
        engine = build_engine(
            store=store,
            modules=modules,
            clock=clock,
            settings=EngineSettings(
                max_running=k,
                stop_grace_sec=1.0,
                scheduler=SchedulerSettings(lookahead_sec=args.lookahead),
            ),
        )
        load = await stack.enter_async_context(api_load(engine, directory, args))
        # The instant is chosen once the tasks exist; if writing it into K tasks took so long
        # that less than half the lead is left, a later instant is written again.
        lead = args.lead
        for _ in range(SETUP_ATTEMPTS):
            due_s = math.ceil(time.time() + lead)
            due = from_micros(due_s * 1_000_000)
            await gather_chunked(
                store.update_task(
                    task.id,
                    spec=task_spec(i, args.schedule, due),
                    enabled=True,
                    next_run_at=due,
                    now=clock.now(),
                )
                for i, task in enumerate(tasks)
            )
            if due_s - time.time() >= args.lead / 2:
                break
            lead *= 2
        runner, scheduler = engine.runner, engine.scheduler
        async with runner:
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            await scheduler.start()
            lead_ms = (due_s - time.time()) * 1000
            # The loop thread's CPU time shortly before the claim: with it, the CPU spent on
            # claiming and starting the K executions, which other load on the machine does
            # not inflate the way it inflates wall-clock lateness.
            cpu_mark: list[float] = []
            instant_mark: list[float] = []
            loop = asyncio.get_running_loop()
            loop.call_at(
                loop.time() + lead_ms / 1000 - CPU_MARK_BEFORE_SEC,
                lambda: cpu_mark.append(time.thread_time()),
            )
            # And just before the instant: the CPU of the release itself, per start.
            loop.call_at(
                loop.time() + lead_ms / 1000 - INSTANT_MARK_BEFORE_SEC,
                lambda: instant_mark.append(time.thread_time()),
            )
            try:
                await asyncio.wait_for(
                    noop.all_entered.wait(), timeout=args.lead + 5 + args.timeout
                )
                await asyncio.wait_for(runner.drain(), timeout=args.timeout)
                await store.flush()
                all_committed = time.time()
            finally:
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                    print(f"# cProfile of the firing window: {args.profile}")
                await scheduler.stop()
        await stack.aclose()  # the API load ends; its summary is in `load`
    with sqlite3.connect(db_path) as cx:
        claimed, runner_started, done, skipped = cx.execute(
            "SELECT min(queued_at), max(started_at),"
            " sum(status = 'done' AND started_at IS NOT NULL), sum(status = 'skipped')"
            " FROM executions"
        ).fetchone()
    cx.close()
    late = [(t - due_s) * 1000 for t in noop.entered]
    return RunResult(
        k=k,
        p50_ms=percentile(late, 0.50),
        p99_ms=percentile(late, 0.99),
        max_ms=max(late),
        min_ms=min(late),
        claim_ms=(claimed / 1e6 - due_s) * 1000,
        runner_start_ms=(runner_started / 1e6 - due_s) * 1000,
        all_committed_ms=(all_committed - due_s) * 1000,
        lead_ms=lead_ms,
        done_rows=int(done),
        loop_cpu_ms=(noop.last_cpu - cpu_mark[0]) * 1000 if cpu_mark else math.nan,
        start_cpu_us=(noop.last_cpu - instant_mark[0]) * 1e6 / k if instant_mark else math.nan,
        load=load_average(),
        skipped=int(skipped or 0),
        api=load.get("summary", ""),
    )


@contextlib.asynccontextmanager
async def api_load(
    engine: Engine, directory: Path, args: argparse.Namespace
) -> AsyncIterator[dict[str, str]]:
    """With `--api-load N`: serve the API over `engine` on 127.0.0.1 and run the load process
    until the block ends; the dict gets its summary ("summary") then. Without: nothing."""
    result: dict[str, str] = {}
    if not args.api_load:
        yield result
        return
    key_file = directory / "bench.key"
    key_file.write_text(new_key() + "\n")
    key_file.chmod(0o600)
    settings = ApiSettings(
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        unix_socket=None,
        keys=(ApiKeyRef(name="bench", key_file=key_file, scopes=frozenset({"*"})),),
        max_in_flight=args.api_in_flight or ApiSettings().max_in_flight,
    )

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app = build_app(
        core=engine.core,
        auth=Authenticator.from_settings(settings),
        api_settings=settings,
        health=health,
    )
    async with serve_api(app, settings) as site_runner:
        host, port = site_runner.addresses[0][:2]
        url = f"http://{host}:{port}/api/v2/tasks?limit={args.api_limit}"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("_api_load.py")),
            url,
            str(key_file),
            str(args.api_load),
            str(args.lead * 4 + 5 + args.timeout),  # its own bound, whatever happens here
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            if ready.strip() != b"ready":
                raise RuntimeError(f"the load process said {ready!r}")
            yield result
        finally:
            if process.returncode is None:
                process.terminate()
            out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
            result["summary"] = out.decode().strip().splitlines()[-1] if out.strip() else ""


HEADER = (
    f"{'K':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'min ms':>8} {'claim ms':>9}"
    f" {'run-start ms':>12} {'committed ms':>12} {'loop cpu ms':>11} {'us/start':>8}"
    f" {'done':>6} {'load':>5}"
)


def row(result: RunResult, label: str = "") -> str:
    """One table line of a run (or of the medians, with `label`)."""
    return (
        f"{result.k:>6} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.max_ms:>8.2f}"
        f" {result.min_ms:>8.2f} {result.claim_ms:>9.1f} {result.runner_start_ms:>12.2f}"
        f" {result.all_committed_ms:>12.1f} {result.loop_cpu_ms:>11.1f} {result.start_cpu_us:>8.1f}"
        f" {result.done_rows:>6}"
        f" {result.load:>5.2f}{label}"
    )


def median_result(results: Sequence[RunResult]) -> RunResult:
    """Field-wise median of several runs with the same K."""
    return RunResult(
        k=results[0].k,
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        max_ms=statistics.median(r.max_ms for r in results),
        min_ms=statistics.median(r.min_ms for r in results),
        claim_ms=statistics.median(r.claim_ms for r in results),
        runner_start_ms=statistics.median(r.runner_start_ms for r in results),
        all_committed_ms=statistics.median(r.all_committed_ms for r in results),
        lead_ms=statistics.median(r.lead_ms for r in results),
        done_rows=min(r.done_rows for r in results),
        loop_cpu_ms=statistics.median(r.loop_cpu_ms for r in results),
        start_cpu_us=statistics.median(r.start_cpu_us for r in results),
        load=statistics.median(r.load for r in results),
        skipped=max(r.skipped for r in results),
    )


def parse_k(text: str) -> list[int]:
    """Parse `--k 1,1000,10000`."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("K must be positive integers, comma-separated")
    return values


def main() -> None:
    """Parse the options, run every K `--repeat` times, print the table and the verdict."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Columns are milliseconds relative to the due instant; see the module docstring.",
    )
    parser.add_argument(
        "--k", type=parse_k, default=list(DEFAULT_K), help="task counts, e.g. 1,1000,10000"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per K (medians printed)")
    parser.add_argument(
        "--schedule",
        choices=("oneshot", "interval"),
        default="oneshot",
        help="one-shot next_run_at, or an hourly interval schedule aligned on the instant",
    )
    parser.add_argument(
        "--lead", type=float, default=2.0, help="seconds from the end of setup to the instant"
    )
    parser.add_argument(
        "--lookahead", type=float, default=SchedulerSettings().lookahead_sec, help="seconds"
    )
    parser.add_argument(
        "--log",
        choices=("file", "none"),
        default="file",
        help="daemon-style JSON log lines to a file (default), or no logging",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds the module sleeps after noting its start (0: returns at once, so each"
        " execution's ending runs before the next one starts)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up a run after this many seconds"
    )
    parser.add_argument(
        "--api-load",
        type=int,
        default=0,
        metavar="N",
        help="N connections from a second process read the API during the run (0: none)",
    )
    parser.add_argument(
        "--api-limit", type=int, default=100, help="tasks per page the API load reads"
    )
    parser.add_argument(
        "--api-in-flight", type=int, default=0, help="[api] max_in_flight (0: the default)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the event loop from scheduler start to drain; write pstats to FILE",
    )
    args = parser.parse_args()

    print(
        f"# taskd fire latency: {python_and_cpus()}, schedule={args.schedule}, lead={args.lead}s,"
        f" lookahead={args.lookahead}s, log={args.log}, hold={args.hold}s, max_running=K,"
        f" repeat={args.repeat}, api_load={args.api_load} (limit={args.api_limit}),"
        f" calibration {calibration_ms():.0f} ms"
    )
    print("# lateness = time.time() on entering the no-op run() - due instant")
    print(HEADER)
    # One log file for the whole process: taskd's loggers cache their output on first use.
    with (
        state_dir(keep=False, prefix="taskd-bench-fire-") as log_dir,
        open(log_dir / "taskd.log", "w") as log_file,
    ):
        configure_bench_logging(args.log, log_file)
        medians = run_all(args)
    for result in medians:
        if result.k == TARGET_K:
            verdict = "PASS" if result.p99_ms <= TARGET_P99_MS else "FAIL"
            print(
                f"# target p99 <= {TARGET_P99_MS} ms at K = {TARGET_K}:"
                f" {result.p99_ms:.2f} ms -> {verdict}"
            )


def run_all(args: argparse.Namespace) -> list[RunResult]:
    """Run every K `--repeat` times, printing each run; return one (median) result per K."""
    medians: list[RunResult] = []
    for k in args.k:
        results = []
        for _ in range(args.repeat):
            result = asyncio.run(one_run(k, args))
            results.append(result)
            print(row(result), flush=True)
            if result.skipped:
                print(f"# warning: {result.skipped} executions were skipped")
            if result.api:
                print(f"#   api load: {result.api}", flush=True)
            if result.done_rows != k:
                print(f"# warning: {result.done_rows} of {k} executions are done in the store")
            if result.lead_ms < args.lookahead * 1000:
                print(f"# warning: started only {result.lead_ms:.0f} ms before the instant")
        if args.repeat > 1:
            medians.append(median_result(results))
            print(row(medians[-1], "  <- median"), flush=True)
        else:
            medians.append(results[0])
    return medians


if __name__ == "__main__":
    main()

"""Benchmark: the HTTP API under a bounded load from a second process on loopback.

Run by hand: `.venv/bin/python bench/api.py [--repeat 3] [--pin] [--wrk auto|off]
[--profile py-spy|cprofile]`; a count of 0 (`--list 0`) leaves a scenario out.

Each run: a fresh state dir; `--tasks` tasks (the `sleep` module, 0 s in 1 step, `overlap =
parallel`) written through taskd's own `Store` before the daemon starts, each with
`--history` finished executions (so a task shows a `last_execution`, as on a daemon that has
been running); a config with one TCP listener on 127.0.0.1 (a free port), an API key in a 0600
key file, no Unix socket, and one config-defined no-op task (`bench-noop`) for the run action.
The daemon, the system under test, is `python -m taskd serve --config ...` in its own process;
the benchmark waits for `GET /api/v2/health`, then this process is the load generator: one
aiohttp `ClientSession` (`TCPConnector(limit=--concurrency)`), `--concurrency` workers
sharing a fixed number of requests. Scenarios, each after a warm-up that is not recorded:

- `get`: `GET /api/v2/tasks/{id}`, ids spread over every stored task (`--get` requests);
- `list`: `GET /api/v2/tasks?limit=50`, the first page with the total count (`--list`);
- `run`: `PUT /api/v2/tasks/bench-noop/action/run` (`--run`); the clock stops when every
  answer arrived; the time until the daemon has no running or queued execution left is
  shown apart (`drain`), and the most executions health reported running and queued
  meanwhile (polled on a connection of its own).

Per request the latency (time.perf_counter around request and body) is recorded; errors are
answers outside 2xx and failed requests. Also shown: CPU of the daemon's event loop thread
and of its other threads (the aiosqlite thread) and of this process, in % of one core over
the scenario: a Python load generator on a small machine takes CPU from the server, so with
`--wrk auto` (the default, when `wrk` is installed) `wrk -t2 -c<concurrency> -d<--wrk-seconds>`
loads the single-task GET of one task too, as a cross-check. `--pin` puts the daemon on CPU 0
and this process and wrk on the others, so generator and server do not compete for a core
(and the daemon's two threads share one; cross-CPU wake-ups are costly on small VMs).

All load is closed-loop: with C connections, mean latency = C / throughput (Little's law),
so at 64 connections a p99 of 20 ms needs well over 3,200 req/s.

`--repeat N` runs everything N times (a fresh state dir and daemon each time) and prints the
median of each column. At the end the daemon gets SIGTERM and must exit 0. The daemon runs
from the directory holding the `taskd` package this script imported (`PYTHONPATH` picks
another tree), which the header names with its git commit.

Profiling the daemon: `--profile py-spy` samples it with py-spy during each scenario (raw
collapsed stacks in `--profile-dir`, plus the functions with the most samples, inclusive and
self); `--profile cprofile` runs it under cProfile and prints its top functions at exit. Both
slow the daemon down: the figures of a profiled run are not the benchmark's.

Target: >= 3,000 req/s for the single-task GET with p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import pstats
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from _common import free_port, percentile, thread_cpu_seconds, write_private

import taskd
from taskd.clock import SystemClock
from taskd.model import ExecutionStatus, TaskSource, TriggerKind
from taskd.store import DB_FILE, NewExecution, open_store
from taskd.taskspec import validate_task_spec

TARGET_RPS = 3000.0
TARGET_P99_MS = 20.0
RUN_TASK = "bench-noop"
PAGE = 50
START_TIMEOUT_SEC = 60.0
STOP_TIMEOUT_SEC = 60.0
DRAIN_TIMEOUT_SEC = 300.0
REQUEST_TIMEOUT_SEC = 30.0
PY_SPY_RATE = 250  # samples per second
PROFILE_TOP = 20
WATCH_INTERVAL_SEC = 0.1

Request = tuple[str, str]  # method, path
TASKD_ROOT = Path(taskd.__file__).resolve().parents[1]  # the directory holding taskd/


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one scenario with one load generator."""

    scenario: str
    generator: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    loop_cpu: float = math.nan  # % of one core: the daemon's event loop thread
    db_cpu: float = math.nan  # % of one core: the daemon's other threads (aiosqlite)
    client_cpu: float = math.nan  # % of one core: the load generator
    drain_sec: float = math.nan  # `run` only: until no execution was running or queued
    error_kinds: tuple[tuple[str, int], ...] = ()


HEADER = (
    f"{'scenario':<8} {'generator':<9} {'requests':>8} {'errors':>6} {'req/s':>7}"
    f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'loop cpu':>8} {'db cpu':>6}"
    f" {'client':>6} {'cpu µs/req':>10} {'drain s':>7}"
)


def cpu_per_request(result: Result) -> float:
    """The daemon's CPU (all threads) per request in µs: the figure that a shared machine
    does not skew much (wall-clock rates depend on what else runs)."""
    if not result.requests or math.isnan(result.loop_cpu):
        return math.nan
    db = 0.0 if math.isnan(result.db_cpu) else result.db_cpu
    return (result.loop_cpu + db) / 100 * result.seconds / result.requests * 1e6


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}%"


def row(result: Result) -> str:
    """One table line."""
    drain = "-" if math.isnan(result.drain_sec) else f"{result.drain_sec:.1f}"
    line = (
        f"{result.scenario:<8} {result.generator:<9} {result.requests:>8} {result.errors:>6}"
        f" {result.rps:>7.0f} {result.p50_ms:>7.2f} {result.p99_ms:>7.2f} {result.max_ms:>7.1f}"
        f" {_pct(result.loop_cpu):>8} {_pct(result.db_cpu):>6} {_pct(result.client_cpu):>6}"
        f" {cpu_per_request(result):>10.0f} {drain:>7}"
    )
    if result.error_kinds:
        line += "  errors: " + ", ".join(f"{kind} x{n}" for kind, n in result.error_kinds)
    return line


def median_result(results: Sequence[Result]) -> Result:
    """Each column's median over runs of the same scenario and generator."""

    def med(name: str) -> float:
        values = [getattr(r, name) for r in results if not math.isnan(getattr(r, name))]
        return statistics.median(values) if values else math.nan

    first = results[0]
    return replace(
        first,
        requests=int(med("requests")),
        errors=int(med("errors")),
        seconds=med("seconds"),
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        max_ms=med("max_ms"),
        loop_cpu=med("loop_cpu"),
        db_cpu=med("db_cpu"),
        client_cpu=med("client_cpu"),
        drain_sec=med("drain_sec"),
        error_kinds=(),
    )


# -- CPU accounting ---------------------------------------------------------------------------


@dataclass(slots=True)
class CpuMeter:
    """CPU of the daemon's threads and of this process over a stretch of wall time."""

    pid: int
    started: float = 0.0
    daemon: tuple[float, float] = (0.0, 0.0)
    client: float = 0.0

    def start(self) -> None:
        """Mark the beginning."""
        self.daemon = thread_cpu_seconds(self.pid)
        times = os.times()
        self.client = times.user + times.system
        self.started = time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        """(loop, other daemon threads, client) in % of one core since `start`."""
        wall = time.perf_counter() - self.started
        loop, other = thread_cpu_seconds(self.pid)
        times = os.times()
        client = times.user + times.system
        return (
            100 * (loop - self.daemon[0]) / wall,
            100 * (other - self.daemon[1]) / wall,
            100 * (client - self.client) / wall,
        )


# -- setup ------------------------------------------------------------------------------------


def write_config(directory: Path, port: int, key: str) -> Path:
    """The daemon's config: TCP on 127.0.0.1:port with one key, no socket, one no-op task."""
    write_private(directory / "bench.key", key + "\n")
    config = directory / "taskd.toml"
    write_private(
        config,
        f"""\
[daemon]
state_dir = "state"
timezone = "UTC"

[api]
listen = ["127.0.0.1:{port}"]
unix_socket = false
# Every one of the 64 connections served: throughput is measured here, not the cap (8 by
# default; beyond it 503), which fire_latency.py --api-load measures with the engine.
max_in_flight = 64

[[api.keys]]
name = "bench"
key_file = "bench.key"
scopes = ["*"]

[[task]]
name = "{RUN_TASK}"
description = "A no-op for the run-action benchmark"
task_module = "sleep"
task_params = {{ seconds = 0, steps = 1 }}
options = {{ overlap = "parallel" }}
""",
    )
    return config


def bench_spec(index: int) -> dict[str, Any]:
    """The stored JSON definition of pre-filled task `index` (run only when asked)."""
    raw = {
        "name": f"bench-{index:05d}",
        "description": f"pre-filled task {index} of the API benchmark",
        "task_module": "sleep",
        "task_params": {"seconds": 0, "steps": 1},
        "options": {"overlap": "parallel"},
    }
    return validate_task_spec(
        raw, path="", default_timezone="UTC", known_modules={"sleep"}
    ).to_json()


async def prefill(db_path: Path, tasks: int, history: int) -> list[int]:
    """Store `tasks` tasks, each with `history` finished executions; return their ids."""
    clock = SystemClock()
    async with open_store(db_path.parent) as store:
        now = clock.now()
        stored = await asyncio.gather(
            *(
                store.insert_task(
                    name=f"bench-{i:05d}",
                    source=TaskSource.API,
                    spec=bench_spec(i),
                    enabled=True,
                    next_run_at=None,
                    now=now,
                    by="bench",
                )
                for i in range(tasks)
            )
        )
        ids = [task.id for task in stored]
        for round_ in range(history):
            started = now + timedelta(seconds=round_)
            new = [
                NewExecution(task_id=task_id, trigger=TriggerKind.MANUAL, scheduled_for=started)
                for task_id in ids
            ]
            execution_ids = await store.add_executions(new, started)
            pairs = [(e, t) for e, t in zip(execution_ids, ids, strict=True) if e is not None]
            await store.mark_started_many(pairs, started, "bench")
            await asyncio.gather(
                *(
                    store.finish(e, t, ExecutionStatus.DONE, "slept 0 s in 1 steps", started)
                    for e, t in pairs
                )
            )
        return ids


@dataclass(slots=True)
class Daemon:
    """`taskd serve` in a child process."""

    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log (stderr)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_daemon(
    config: Path, log_path: Path, port: int, profile_file: Path | None, cpus: set[int] | None
) -> Daemon:
    """Start `python -m taskd serve --config FILE` (under cProfile with `profile_file`),
    on the CPUs `cpus` if given.
    """
    command = [sys.executable]
    if profile_file is not None:
        command += ["-m", "cProfile", "-o", str(profile_file)]
    command += ["-m", "taskd", "serve", "--config", str(config)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=TASKD_ROOT,  # `-m taskd` imports the taskd this process imported
            start_new_session=True,  # a Ctrl-C on the terminal reaches the benchmark only
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    return Daemon(process, log_path, f"http://127.0.0.1:{port}")


async def wait_healthy(session: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    """Poll health until it answers 200 (RuntimeError if the daemon exits or is too slow)."""
    deadline = time.monotonic() + START_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(
                f"taskd exited with {daemon.process.returncode}:\n{daemon.log_tail()}"
            )
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(daemon.base_url + "/api/v2/health") as response:
                if response.status == 200:
                    report: dict[str, Any] = await response.json()
                    return report
        await asyncio.sleep(0.1)
    raise RuntimeError(f"taskd did not answer health within {START_TIMEOUT_SEC:.0f} s")


def stop_daemon(daemon: Daemon) -> int:
    """SIGTERM the daemon and return its exit code (killed, -9, if it does not stop)."""
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    try:
        return daemon.process.wait(STOP_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()
        print(f"# taskd ignored SIGTERM for {STOP_TIMEOUT_SEC:.0f} s: killed")
        return -9


# -- the load generators ----------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """The outcome of one bounded load."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)  # the first answer's body, for checks
    seconds: float = 0.0


async def drive(
    session: aiohttp.ClientSession,
    base_url: str,
    make: Callable[[int], Request],
    total: int,
    concurrency: int,
    limit_sec: float,
) -> Load:
    """Send `total` requests from `concurrency` workers, each awaiting its answer's body."""
    load = Load()
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            method, path = make(issued)
            issued += 1
            started = time.perf_counter()
            try:
                async with session.request(method, base_url + path) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                body, status = b"", 0
                load.errors[type(error).__name__] += 1
            load.latencies.append(time.perf_counter() - started)
            if not load.bodies:
                load.bodies.append(body)
            if status and not 200 <= status < 300:
                load.errors[f"HTTP {status}"] += 1

    started = time.perf_counter()
    async with asyncio.timeout(limit_sec):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.seconds = time.perf_counter() - started
    return load


def result_of(scenario: str, load: Load, cpu: tuple[float, float, float]) -> Result:
    """Summarize a load."""
    ordered = sorted(load.latencies)
    errors = sum(load.errors.values())
    return Result(
        scenario=scenario,
        generator="aiohttp",
        requests=len(ordered),
        errors=errors,
        seconds=load.seconds,
        rps=len(ordered) / load.seconds,
        p50_ms=1000 * percentile(ordered, 0.50),
        p99_ms=1000 * percentile(ordered, 0.99),
        max_ms=1000 * ordered[-1],
        loop_cpu=cpu[0],
        db_cpu=cpu[1],
        client_cpu=cpu[2],
        error_kinds=tuple(sorted(load.errors.items())),
    )


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


def parse_wrk(output: str) -> tuple[int, int, float, float, float, float]:
    """(requests, errors, seconds, p50 ms, p99 ms, max ms) from `wrk --latency` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    latency = re.search(r"^\s*Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    p50 = re.search(r"^\s*50%\s+(\S+)$", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)$", output, re.MULTILINE)
    if not (done and latency and p50 and p99):
        raise ValueError(f"cannot read wrk's output:\n{output}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx[1])
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    seconds = _wrk_ms(done[2] + done[3]) / 1000
    return (
        int(done[1]),
        errors,
        seconds,
        _wrk_ms(p50[1]),
        _wrk_ms(p99[1]),
        _wrk_ms(latency[1]),
    )


def run_wrk(wrk: str, url: str, key: str, args: argparse.Namespace, pid: int) -> Result | None:
    """Load `url` with wrk for `--wrk-seconds`; None (with a note) if wrk fails."""
    command = [
        wrk,
        "-t2",
        f"-c{args.concurrency}",
        f"-d{args.wrk_seconds}s",
        f"--timeout={REQUEST_TIMEOUT_SEC:.0f}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        url,
    ]
    cpu = CpuMeter(pid)
    cpu.start()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.wrk_seconds + 30, check=False
        )
    except subprocess.TimeoutExpired:
        print("# wrk did not finish in time; no wrk figures")
        return None
    loop, db, _ = cpu.stop()
    if done.returncode != 0:
        print(f"# wrk failed ({done.returncode}): {done.stderr.strip()}")
        return None
    try:
        requests, errors, seconds, p50, p99, worst = parse_wrk(done.stdout)
    except ValueError as error:
        print(f"# {error}")
        return None
    return Result(
        scenario="get",
        generator="wrk",
        requests=requests,
        errors=errors,
        seconds=seconds,
        rps=requests / seconds,
        p50_ms=p50,
        p99_ms=p99,
        max_ms=worst,
        loop_cpu=loop,
        db_cpu=db,
    )


# -- profiling --------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(py_spy: str, pid: int, output: Path | None) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs (nothing without `output`)."""
    if output is None:
        yield
        return
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(PY_SPY_RATE),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, stderr = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, stderr = spy.communicate()
        if not output.exists():
            print(f"# py-spy wrote nothing: {stderr.decode(errors='replace').strip()}")


# Frames every sample of a thread passes through: left out of the inclusive list.
_PLUMBING = re.compile(
    r"<frozen runpy>|\(threading\.py\)|\(asyncio/runners\.py\)|\(taskd/(cli|__main__)\.py\)"
    r"|^serve \(taskd/daemon\.py\)|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) "
    r"|^Handle\._run |^_connection_worker_thread "
)


def _function(frame: str) -> str:
    """`handler (taskd/api/v2.py:199)` -> `handler (taskd/api/v2.py)`: per function."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(\S*?site-packages/", "(", frame).replace(str(Path.cwd()) + "/", "")


def summarize_py_spy(path: Path, top: int = PROFILE_TOP) -> str:
    """The functions with the most samples (inclusive, self) in py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
            while frames and frames[0].startswith(("thread ", "process ")):
                frames = frames[1:]
        if not frames:
            continue
        total += count
        names = [_function(frame) for frame in frames]
        for name in set(names):
            if not _PLUMBING.search(name):
                inclusive[name] += count
        own[names[-1]] += count
    if not total:
        return "# no samples"
    lines = [f"# {total} samples ({PY_SPY_RATE}/s, idle excluded) by thread:"]
    lines += [f"#   {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    lines.append("# inclusive (the function and what it calls):")
    lines += [f"#   {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("# self (the function's own code):")
    lines += [f"#   {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def summarize_cprofile(path: Path, top: int = PROFILE_TOP) -> None:
    """Print the daemon's top functions by own time and by cumulative time."""
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"# cProfile of the daemon's whole life, by {key}:")
        stats.sort_stats(key).print_stats(top)


# -- one run ----------------------------------------------------------------------------------


async def scenarios(
    args: argparse.Namespace, daemon: Daemon, key: str, ids: Sequence[int]
) -> list[Result]:
    """Run the scenarios against the started daemon; return their results."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SEC)
    results: list[Result] = []
    pid = daemon.process.pid
    rng = random.Random(1)
    spread = ids[: args.get_tasks] if args.get_tasks else ids
    get_ids = [rng.choice(spread) for _ in range(args.get + args.warmup)]
    profile_dir: Path | None = args.profile_dir if args.profile == "py-spy" else None

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:
        await wait_healthy(session, daemon)

        async def measure(
            scenario: str, make: Callable[[int], Request], total: int, warmup: int
        ) -> tuple[Result, Load]:
            await drive(session, daemon.base_url, make, warmup, args.concurrency, args.timeout)
            spy_file = None if profile_dir is None else profile_dir / f"{scenario}.txt"
            with py_spy(args.py_spy, pid, spy_file):
                cpu = CpuMeter(pid)
                cpu.start()
                load = await drive(
                    session,
                    daemon.base_url,
                    lambda i: make(i + warmup),
                    total,
                    args.concurrency,
                    args.timeout,
                )
                result = result_of(scenario, load, cpu.stop())
            print(row(result), flush=True)
            if spy_file is not None and spy_file.exists():
                print(summarize_py_spy(spy_file), flush=True)
            return result, load

        if args.get:
            result, load = await measure(
                "get", lambda i: ("GET", f"/api/v2/tasks/{get_ids[i]}"), args.get, args.warmup
            )
            check_task(load.bodies[0])
            results.append(result)

        if args.wrk:
            url = f"{daemon.base_url}/api/v2/tasks/{ids[len(ids) // 2]}"
            spy_file = None if profile_dir is None else profile_dir / "get-wrk.txt"
            with py_spy(args.py_spy, pid, spy_file):
                wrk_result = await asyncio.to_thread(run_wrk, args.wrk, url, key, args, pid)
            if wrk_result is not None:
                print(row(wrk_result), flush=True)
                results.append(wrk_result)
            if spy_file is not None and spy_file.exists():
                print(summarize_py_spy(spy_file), flush=True)

        if args.list:
            result, load = await measure(
                "list",
                lambda i: ("GET", f"/api/v2/tasks?limit={PAGE}"),
                args.list,
                max(1, args.warmup // 5),
            )
            check_page(load.bodies[0], len(ids) + 1)
            results.append(result)

        if args.run:
            run_path = f"/api/v2/tasks/{RUN_TASK}/action/run"
            peak = {"running": 0, "queued": 0}
            watch = asyncio.create_task(watch_runner(daemon, peak))
            try:
                result, load = await measure(
                    "run", lambda i: ("PUT", run_path), args.run, max(1, args.warmup // 5)
                )
                check_run(load.bodies[0])
                started = time.perf_counter()
                await drained(session, daemon)
                drain = time.perf_counter() - started
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            results.append(replace(result, drain_sec=drain))
            print(
                f"# run: no execution running or queued {drain:.1f} s after the last answer;"
                f" at most {peak['running']} running and {peak['queued']} queued (health,"
                f" every {WATCH_INTERVAL_SEC} s)",
                flush=True,
            )
    return results


def check_task(body: bytes) -> None:
    """Fail loudly if a single-task answer is not a task."""
    task = json.loads(body)
    if not isinstance(task, dict) or "id" not in task or "name" not in task:
        raise RuntimeError(f"GET /tasks/{{id}} answered {body[:200]!r}")


def check_page(body: bytes, expected_count: int) -> None:
    """Fail loudly if the list answer is not a full first page of all tasks."""
    page = json.loads(body)
    if page.get("count") != expected_count or len(page.get("tasks", ())) != PAGE:
        raise RuntimeError(
            f"GET /tasks?limit={PAGE}: count {page.get('count')}, "
            f"{len(page.get('tasks', ()))} tasks; expected {expected_count} and {PAGE}"
        )


def check_run(body: bytes) -> None:
    """Fail loudly if the run answer names no execution."""
    answer = json.loads(body)
    if not answer.get("execution_id"):
        raise RuntimeError(f"PUT .../action/run answered {body[:200]!r}")


async def watch_runner(daemon: Daemon, peak: dict[str, int]) -> None:
    """Keep the most executions health reported running and queued (own connection)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(daemon.base_url + "/api/v2/health") as response:
                    report = await response.json()
                for name in ("running", "queued"):
                    peak[name] = max(peak[name], int(report.get(name, 0)))
            await asyncio.sleep(WATCH_INTERVAL_SEC)


async def drained(session: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    """Poll health until no execution runs or waits; return the last report."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SEC
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(daemon.base_url + "/api/v2/health") as response:
            report = await response.json()
        if report.get("running") == 0 and report.get("queued") == 0:
            return report
        await asyncio.sleep(0.05)
    raise RuntimeError(f"executions still running after {DRAIN_TIMEOUT_SEC:.0f} s: {report}")


def one_run(args: argparse.Namespace, number: int) -> list[Result]:
    """A fresh state dir and daemon, the scenarios, then SIGTERM (exit 0 required)."""
    directory = Path(tempfile.mkdtemp(prefix="taskd-bench-api-"))
    daemon: Daemon | None = None
    try:
        key = secrets.token_urlsafe(32)
        port = free_port()
        config = write_config(directory, port, key)
        started = time.perf_counter()
        ids = asyncio.run(prefill(directory / "state" / DB_FILE, args.tasks, args.history))
        print(
            f"# run {number}: {len(ids)} tasks with {args.history} finished execution(s) each"
            f" stored in {time.perf_counter() - started:.1f} s; port {port}",
            flush=True,
        )
        cprofile_file = None
        if args.profile == "cprofile":
            cprofile_file = args.profile_dir / f"daemon-{number}.pstats"
        daemon = start_daemon(
            config, directory / "taskd.log", port, cprofile_file, {0} if args.pin else None
        )
        results = asyncio.run(scenarios(args, daemon, key, ids))
        code = stop_daemon(daemon)
        if code != 0:
            raise RuntimeError(f"taskd exited with {code} after SIGTERM:\n{daemon.log_tail()}")
        print(f"# run {number}: taskd exited 0 after SIGTERM", flush=True)
        if cprofile_file is not None and cprofile_file.exists():
            summarize_cprofile(cprofile_file)
        return results
    finally:
        if daemon is not None and daemon.process.poll() is None:
            stop_daemon(daemon)
        if args.keep:
            print(f"# kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


# -- main -------------------------------------------------------------------------------------


def other_benchmarks() -> list[str]:
    """Command lines of other running `bench/` processes (they would skew the figures)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), os.getppid()):
            continue
        try:
            with open(f"{entry.path}/cmdline", "rb") as file:
                command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "bench/" in command and "bench/api.py" not in command:
            found.append(f"{entry.name} {command}")
    return found


def machine() -> str:
    """CPU model, core count, Python, aiohttp, load average."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()},"
        f" {platform.python_implementation()} {platform.python_version()},"
        f" aiohttp {aiohttp.__version__}, load {os.getloadavg()[0]:.2f}"
    )


def taskd_source() -> str:
    """Where the taskd under test comes from: its directory and git commit (+ dirty)."""
    done = subprocess.run(
        ["git", "-C", str(TASKD_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = done.stdout.strip() if done.returncode == 0 else "no git"
    return f"taskd {taskd.__version__} from {TASKD_ROOT} ({commit})"


def wrk_version(wrk: str) -> str:
    """wrk's version line."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout + done.stderr).strip().splitlines()[0]
    return " ".join(first.split()[:2])  # `wrk 4.1.0-3+b2`, without the copyright


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks stored")
    parser.add_argument(
        "--history", type=int, default=1, help="finished executions stored per task (0: none)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="connections and workers")
    parser.add_argument("--get", type=int, default=20_000, help="single-task GET requests")
    parser.add_argument(
        "--get-tasks",
        type=int,
        default=0,
        help="GET only the first N stored tasks (default 0: every one; 1: always the same)",
    )
    parser.add_argument("--list", type=int, default=5_000, help="list (limit=50) requests")
    parser.add_argument("--run", type=int, default=5_000, help="run-action requests")
    parser.add_argument(
        "--warmup", type=int, default=1_000, help="warm-up GETs (a fifth for list and run)"
    )
    parser.add_argument("--wrk", default="auto", help="path of wrk, `auto` (PATH) or `off`")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="how long wrk loads")
    parser.add_argument("--repeat", type=int, default=1, help="runs (medians are printed)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up a scenario after seconds"
    )
    parser.add_argument("--profile", choices=("off", "py-spy", "cprofile"), default="off")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "taskd-bench-api-profile",
        help="profiles go here (default: %(default)s)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the daemon on CPU 0, this process and wrk on the others (sched_setaffinity)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    args = parser.parse_args()
    if args.wrk == "off":
        args.wrk = None
    elif args.wrk == "auto":
        args.wrk = shutil.which("wrk")
    if args.profile != "off":
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    # py-spy: on PATH, or installed into this Python's environment (not activated).
    args.py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
    if args.profile == "py-spy" and args.py_spy is None:
        parser.error("py-spy is not on PATH (pip install py-spy)")
    return args


def main() -> None:
    """Run `--repeat` times, print the table of medians and the verdict."""
    args = parse_args()
    if args.pin:
        others = os.sched_getaffinity(0) - {0}
        if not others:
            raise SystemExit("--pin needs at least 2 CPUs")
        os.sched_setaffinity(0, others)  # wrk, started from here, inherits it
    print(f"# taskd API benchmark: {machine()}")
    print(f"# {taskd_source()}")
    print(
        f"# tasks={args.tasks} history={args.history} concurrency={args.concurrency}"
        f" get={args.get} get-tasks={args.get_tasks or 'all'} list={args.list} run={args.run}"
        f" warmup={args.warmup}"
        f" wrk={wrk_version(args.wrk) if args.wrk else 'off'} repeat={args.repeat}"
        f" profile={args.profile} pin={'daemon on CPU 0' if args.pin else 'off'}"
    )
    for other in other_benchmarks():
        print(f"# WARNING: another benchmark runs and skews the figures: {other}")
    print(HEADER, flush=True)
    runs = [one_run(args, number) for number in range(1, args.repeat + 1)]
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in (result for run in runs for result in run):
        groups.setdefault((result.scenario, result.generator), []).append(result)
    medians = [median_result(group) for group in groups.values()]
    if args.repeat > 1:
        print(f"# median of {args.repeat} runs:")
        print(HEADER)
        for result in medians:
            print(row(result))
    print(f"# load after: {os.getloadavg()[0]:.2f}")
    for result in medians:
        if result.scenario != "get":
            continue
        passed = result.rps >= TARGET_RPS and result.p99_ms <= TARGET_P99_MS and not result.errors
        print(
            f"# target get >= {TARGET_RPS:.0f} req/s, p99 <= {TARGET_P99_MS:.0f} ms"
            f" ({result.generator}): {result.rps:.0f} req/s, p99 {result.p99_ms:.2f} ms"
            f" -> {'PASS' if passed else 'FAIL'}"
        )


if __name__ == "__main__":
    main()

"""Benchmark: daemon start-up, memory and idle CPU with 100,000 / 1,000,000 stored tasks.

Run by hand: `.venv/bin/python bench/scale.py [--sizes 100000,1000000] [--repeat 3]`.

For each size: a fresh state dir; `open_store` creates the schema, then the tasks go into the
`tasks` table directly with sqlite3 `executemany` (fast). Each task looks like one made through
the API: the spec JSON is `validate_task_spec(...).to_json()` of a task with one cron schedule
(`M H * * *` in Europe/Berlin, spread over the day) and `next_run_at` is that schedule's next
fire time after now + 1 h, computed by taskd's own schedule engine, so nothing is due while the
benchmark runs. Then `taskd serve --config <generated toml>` runs as a real subprocess
(TCP and Unix socket off), and the benchmark measures:

- start: from just before the process is spawned until its JSON log line "scheduler started"
  arrives on stderr (also: "config applied", i.e. the store opened and config reconciled),
  and the CPU time (user + system, all threads) the daemon had used by then;
- RSS: VmRSS from /proc/<pid>/status once started (and VmHWM, the peak);
- idle CPU: (utime + stime) from /proc/<pid>/stat over `--idle-sec` (10 s) / wall time;
- stop: SIGTERM, then the exit code (must be 0) and how long the exit took.

Targets at 1,000,000 tasks: start <= 20 s, RSS < 500 MB, idle CPU < 1 %.
The database file is warm in the page cache (it was just written), as after a quick restart;
`--cold` first evicts it from the page cache (fsync + posix_fadvise DONTNEED on that file
only), as after a reboot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from _common import calibration_ms, load_average, python_and_cpus, state_dir

from taskd.clock import to_micros
from taskd.store import DB_FILE, open_store
from taskd.taskspec import validate_task_spec

TARGET_SIZE = 1_000_000
TARGET_START_SEC = 20.0
TARGET_RSS_MB = 500.0
TARGET_IDLE_CPU_PCT = 1.0
ZONE = "Europe/Berlin"
TASKD = Path(sys.executable).with_name("taskd")
INSERT_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class RunResult:
    """The figures of one daemon start."""

    size: int
    insert_sec: float
    db_mb: float
    config_applied_sec: float
    start_sec: float
    start_cpu_sec: float  # CPU time the daemon had used when "scheduler started" arrived
    scheduled_tasks: int
    rss_mb: float
    hwm_mb: float
    idle_cpu_pct: float
    exit_code: int | None
    stop_sec: float
    load: float  # 1-minute load average after the run


def spec_templates(now: datetime) -> list[tuple[str, int]]:
    """One (spec JSON with a name placeholder, next_run_at µs) per minute of the day."""
    placeholder = "NAME-PLACEHOLDER"
    earliest = now + timedelta(hours=1)
    templates = []
    for hour in range(24):
        for minute in range(60):
            raw = {
                "name": placeholder,
                "description": "nightly export of one customer's data",
                "task_module": "shell",
                "task_params": {"argv": ["/usr/local/bin/export", "--customer", placeholder]},
                "task_timeout_sec": 3600,
                "schedules": [{"cron": f"{minute} {hour} * * *", "timezone": ZONE}],
                "options": {"overlap": "skip", "catch_up": "once", "max_retries": 2},
            }
            spec = validate_task_spec(raw, path="", default_timezone="UTC")
            due = spec.schedules.next_after(earliest)
            assert due is not None
            # The store's own JSON form: compact, sorted keys.
            text = json.dumps(spec.to_json(), separators=(",", ":"), sort_keys=True)
            templates.append((text, to_micros(due)))
    return templates


def populate(db_path: Path, size: int) -> float:
    """Create the schema with `open_store`, insert `size` tasks with executemany; seconds."""

    async def create_schema() -> None:
        async with open_store(db_path.parent):
            pass

    started = time.perf_counter()
    asyncio.run(create_schema())
    now = datetime.now(UTC)
    now_us = to_micros(now)
    templates = spec_templates(now)
    rng = random.Random(size)

    def rows(start: int, stop: int) -> Iterator[tuple[Any, ...]]:
        for index in range(start, stop):
            name = f"export-{index:07d}"
            text, due_us = templates[rng.randrange(len(templates))]
            yield (
                name,
                "api",
                text.replace("NAME-PLACEHOLDER", name),
                1,
                due_us,
                now_us,
                now_us,
                "bench",
            )

    cx = sqlite3.connect(db_path, isolation_level=None)
    try:
        cx.execute("PRAGMA journal_mode = WAL")
        cx.execute("PRAGMA synchronous = OFF")
        cx.execute("BEGIN")
        for start in range(0, size, INSERT_CHUNK):
            cx.executemany(
                "INSERT INTO tasks (name, source, spec, enabled, next_run_at, created_at,"
                " updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows(start, min(size, start + INSERT_CHUNK)),
            )
        cx.execute("COMMIT")
        cx.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        cx.close()
    return time.perf_counter() - started


def evict_from_page_cache(path: Path) -> None:
    """Write `path` back to disk and drop its pages from the page cache (this file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_config(directory: Path) -> Path:
    """A config file for `taskd serve`: the state dir, no API listeners, no tasks."""
    config = directory / "taskd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{directory / "state"}"\n[api]\nlisten = []\nunix_socket = false\n'
    )
    return config


def read_lines(stream: IO[bytes], lines: queue.Queue[tuple[float, bytes]]) -> None:
    """Put each line of `stream` with its arrival time (monotonic) on `lines`, then b""."""
    for line in iter(stream.readline, b""):
        lines.put((time.monotonic(), line))
    lines.put((time.monotonic(), b""))


def wait_for_event(
    lines: queue.Queue[tuple[float, bytes]], event: str, deadline: float, seen: dict[str, Any]
) -> float:
    """Read log lines until one with `event`; return its arrival time. Records all in `seen`."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {event!r} log line in time")
        arrived, line = lines.get(timeout=remaining)
        if not line:
            raise RuntimeError(f"taskd exited before logging {event!r}")
        try:
            record = json.loads(line)
        except ValueError:
            print(f"# taskd: {line.decode(errors='replace').rstrip()}", file=sys.stderr)
            continue
        seen[record.get("event", "")] = (arrived, record)
        if record.get("level") in ("error", "critical"):
            print(f"# taskd logged: {record}", file=sys.stderr)
        if record.get("event") == event:
            return arrived


def proc_status_mb(pid: int, field: str) -> float:
    """A `VmRSS`-style field of /proc/<pid>/status, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise LookupError(field)


def proc_cpu_sec(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_daemon(directory: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start `taskd serve`, take the figures, SIGTERM it; return them."""
    config = write_config(directory)
    lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
    seen: dict[str, Any] = {}
    spawned = time.monotonic()
    process = subprocess.Popen(
        [str(TASKD), "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    reader = threading.Thread(target=read_lines, args=(process.stderr, lines), daemon=True)
    reader.start()
    try:
        deadline = spawned + args.start_timeout
        started_at = wait_for_event(lines, "scheduler started", deadline, seen)
        start_cpu_sec = proc_cpu_sec(process.pid)  # both threads; contention does not add
        scheduled = int(seen["scheduler started"][1].get("scheduled_tasks", -1))
        config_applied = seen.get("config applied", (started_at, None))[0]
        wait_for_event(lines, "taskd started", deadline, seen)
        rss_mb = proc_status_mb(process.pid, "VmRSS")
        hwm_mb = proc_status_mb(process.pid, "VmHWM")
        cpu_before, wall_before = proc_cpu_sec(process.pid), time.monotonic()
        time.sleep(args.idle_sec)
        cpu_after, wall_after = proc_cpu_sec(process.pid), time.monotonic()
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = process.wait(timeout=args.stop_timeout)
        except subprocess.TimeoutExpired:
            exit_code = None
        stop_sec = time.monotonic() - stopping
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {
        "config_applied_sec": config_applied - spawned,
        "start_sec": started_at - spawned,
        "start_cpu_sec": start_cpu_sec,
        "scheduled_tasks": scheduled,
        "rss_mb": rss_mb,
        "hwm_mb": hwm_mb,
        "idle_cpu_pct": (cpu_after - cpu_before) / (wall_after - wall_before) * 100,
        "exit_code": exit_code,
        "stop_sec": stop_sec,
    }


def one_run(size: int, args: argparse.Namespace) -> RunResult:
    """Populate a fresh state dir with `size` tasks and measure one daemon start."""
    with state_dir(args.keep, prefix="taskd-bench-scale-") as directory:
        db_path = directory / "state" / DB_FILE
        insert_sec = populate(db_path, size)
        db_mb = db_path.stat().st_size / 1e6
        if args.cold:
            evict_from_page_cache(db_path)
        figures = measure_daemon(directory, size, args)
    return RunResult(size=size, insert_sec=insert_sec, db_mb=db_mb, load=load_average(), **figures)


HEADER = (
    f"{'tasks':>8} {'insert s':>8} {'db MB':>6} {'opened s':>8} {'start s':>8} {'cpu s':>6}"
    f" {'RSS MB':>7} {'peak MB':>7} {'idle CPU %':>10} {'exit':>4} {'stop s':>6}"
    f" {'loaded':>8} {'load':>5}"
)


def row(result: RunResult, label: str = "") -> str:
    """One table line."""
    return (
        f"{result.size:>8} {result.insert_sec:>8.1f} {result.db_mb:>6.0f}"
        f" {result.config_applied_sec:>8.2f} {result.start_sec:>8.2f}"
        f" {result.start_cpu_sec:>6.2f} {result.rss_mb:>7.0f}"
        f" {result.hwm_mb:>7.0f} {result.idle_cpu_pct:>10.2f} {result.exit_code!s:>4}"
        f" {result.stop_sec:>6.2f} {result.scheduled_tasks:>8} {result.load:>5.2f}{label}"
    )


def median_result(results: Sequence[RunResult]) -> RunResult:
    """Field-wise median of runs of one size (the exit code: the worst)."""

    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in results))

    codes = {r.exit_code for r in results}
    return RunResult(
        size=results[0].size,
        insert_sec=med("insert_sec"),
        db_mb=med("db_mb"),
        config_applied_sec=med("config_applied_sec"),
        start_sec=med("start_sec"),
        start_cpu_sec=med("start_cpu_sec"),
        scheduled_tasks=min(r.scheduled_tasks for r in results),
        rss_mb=med("rss_mb"),
        hwm_mb=med("hwm_mb"),
        idle_cpu_pct=med("idle_cpu_pct"),
        exit_code=0 if codes == {0} else next(iter(codes - {0})),
        stop_sec=med("stop_sec"),
        load=med("load"),
    )


def parse_sizes(text: str) -> list[int]:
    """Parse `--sizes 100000,1000000` (0 measures the bare daemon)."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("sizes must be integers >= 0, comma-separated")
    return values


def main() -> None:
    """Parse the options, run every size `--repeat` times, print the table and verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[100_000, 1_000_000], help="task counts"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (medians)")
    parser.add_argument("--idle-sec", type=float, default=10.0, help="idle CPU window")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--stop-timeout", type=float, default=40.0, help="seconds")
    parser.add_argument(
        "--cold", action="store_true", help="evict the database file from the page cache first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dirs")
    args = parser.parse_args()

    print(
        f"# taskd scale: {python_and_cpus()}, sizes={args.sizes}, idle window {args.idle_sec}s,"
        f" repeat={args.repeat}, page cache {'cold' if args.cold else 'warm'},"
        f" calibration {calibration_ms():.0f} ms;"
        " times from spawn, MB = 10^6 bytes"
    )
    print(HEADER, flush=True)
    medians = []
    for size in args.sizes:
        results = []
        for _ in range(args.repeat):
            results.append(one_run(size, args))
            print(row(results[-1]), flush=True)
        median = median_result(results) if args.repeat > 1 else results[0]
        if args.repeat > 1:
            print(row(median, "  <- median"), flush=True)
        medians.append(median)
        if median.scheduled_tasks != size:
            print(f"# warning: the scheduler loaded {median.scheduled_tasks}, not {size}")
    for result in medians:
        if result.size != TARGET_SIZE:
            continue
        checks = (
            (f"start <= {TARGET_START_SEC:.0f} s", result.start_sec <= TARGET_START_SEC),
            (f"RSS < {TARGET_RSS_MB:.0f} MB", result.rss_mb < TARGET_RSS_MB),
            (f"idle CPU < {TARGET_IDLE_CPU_PCT} %", result.idle_cpu_pct < TARGET_IDLE_CPU_PCT),
            ("SIGTERM -> exit 0", result.exit_code == 0),
        )
        for label, ok in checks:
            print(f"# target at {TARGET_SIZE} tasks, {label}: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()

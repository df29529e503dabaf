"""Several taskd nodes over one PostgreSQL: executions per second with 1, 2 and 3 nodes, the
fire latency of 1,000 tasks due at one instant across 3 nodes, and the failover time; the
same throughput and latency for a single node on SQLite beside them.

Each node is a process of its own (this script with `--worker`): taskd's engine (store,
runner, scheduler, and on PostgreSQL the cluster membership with its heartbeats) with a
no-op module, no API. The database is a PostgreSQL server the script starts from the
machine's binaries in a temporary directory (Unix socket only; the tests' `pg_server`),
or `--url` for one of yours (each run makes and drops a database of its own there).

Figures (medians of `--repeat` runs):
- `exec/s`: executions finished per second over `--window` seconds while `--tasks` tasks
  fire every second (demand: that many per second), and the CPU seconds the nodes used per
  1,000 executions (process CPU of all node processes; wall-clock rates mean little on a
  shared machine, CPU per execution compares across runs);
- `fire`: lateness of 1,000 one-shot tasks due at one instant (`started_at` - due): p50,
  p99, max;
- `failover`: from kill -9 of a node running work to a survivor declaring it dead, with
  the default `[cluster]` settings (failover_sec 5, heartbeat_sec 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import asyncpg
from _common import (
    configure_bench_logging,
    load_average,
    percentile,
    python_and_cpus,
    state_dir,
)

from taskd.clock import SystemClock, from_micros, to_micros
from taskd.cluster import Cluster
from taskd.engine import EngineSettings, build_engine
from taskd.model import TaskSource
from taskd.modules.base import ModuleContext
from taskd.modules.registry import ModuleRegistry
from taskd.settings import ClusterSettings
from taskd.store import open_store
from taskd.store.postgres import PostgresStore
from taskd.taskspec import validate_task_spec


class NoopModule:
    """A module that returns at once."""

    def __init__(self, name: str = "noop") -> None:
        self.name = name
        self.description: Mapping[str, str] = {"en-US": "Returns at once."}
        self.params: list[dict[str, Any]] = []

    async def run(self, ctx: ModuleContext) -> str | None:
        """Nothing to do."""
        return None


class SleepModule(NoopModule):
    """A module that waits (for the failover measure: runs to take over)."""

    async def run(self, ctx: ModuleContext) -> str | None:
        """Wait a minute."""
        await asyncio.sleep(60)
        return None


# -- a node --------------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """Run one node until SIGTERM."""
    configure_bench_logging("none", sys.stderr)
    modules = ModuleRegistry()
    modules.register(NoopModule())
    modules.register(SleepModule("wait"))
    clock = SystemClock()
    url = args.url or None
    async with open_store(
        Path(args.state_dir), url=url, node=args.worker, history_per_task=1000
    ) as store:
        engine = build_engine(
            store=store,
            modules=modules,
            clock=clock,
            settings=EngineSettings(max_running=args.max_running, dispatcher=args.worker),
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with engine.runner, engine.scheduler, contextlib.AsyncExitStack() as stack:
            if isinstance(store, PostgresStore):
                await stack.enter_async_context(
                    Cluster(
                        store,
                        settings=ClusterSettings(),
                        scheduler=engine.scheduler,
                        runner=engine.runner,
                        clock=clock,
                    )
                )
            print("ready", flush=True)
            await stop.wait()
            await engine.scheduler.stop()
            await engine.runner.shutdown(0)


# -- the driver ----------------------------------------------------------------------------


class Nodes:
    """Node processes of one measure."""

    def __init__(self, url: str | None, base: Path, max_running: int) -> None:
        self.url, self.base, self.max_running = url, base, max_running
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        """Start node `name`; return once it is ready."""
        process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--url",
                self.url or "",
                "--state-dir",
                str(self.base / name),
                "--max-running",
                str(self.max_running),
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"node {name} did not start")
        self.processes[name] = process

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of the running node processes."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for process in self.processes.values():
            with contextlib.suppress(FileNotFoundError):
                with open(f"/proc/{process.pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextlib.contextmanager
def nodes(url: str | None, base: Path, names: list[str], max_running: int) -> Iterator[Nodes]:
    """Started nodes, stopped on exit."""
    started = Nodes(url, base, max_running)
    try:
        for name in names:
            started.start(name)
        yield started
    finally:
        started.stop()


async def add_tasks(
    url: str | None, base: Path, count: int, *, due: datetime, interval: bool, module: str
) -> None:
    """Store `count` tasks due at `due` (every second from then on if `interval`)."""
    raw_schedules = [{"interval_sec": 1}] if interval else []
    # SQLite: the driver writes the one node's file (its state dir, `shared`).
    async with open_store(
        base / ("driver" if url else "shared"), url=url, node="bench-driver"
    ) as store:
        for index in range(count):
            spec = validate_task_spec(
                {
                    "name": f"b{index:05d}",
                    "task_module": module,
                    "schedules": raw_schedules,
                    "options": {"overlap": "parallel"},
                },
                path="",
                default_timezone="UTC",
                known_modules={"noop", "wait"},
            ).to_json()
            await store.insert_task(
                name=spec["name"],
                source=TaskSource.API,
                spec=spec,
                enabled=True,
                next_run_at=due,
                now=datetime.now(UTC),
            )


async def query(url: str | None, base: Path, sql_pg: str, sql_sqlite: str) -> list[Any]:
    """Rows of a read, on whichever store the measure uses."""
    if url:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql_pg))
        finally:
            await conn.close()
    import sqlite3

    path = base / "shared" / "taskd.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql_sqlite).fetchall()


def fresh_database(admin_url: str, name: str) -> str:
    """Create database `name` (dropped first if left over); return its URL."""

    async def make() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(make())
    base, _, query_text = admin_url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}" + (f"?{query_text}" if query_text else "")


def throughput(args: argparse.Namespace, url: str | None, count: int) -> tuple[float, float]:
    """(executions/s, CPU seconds per 1,000 executions) with `count` nodes."""
    with state_dir(False, "taskd-bench-cluster-") as base:
        due = datetime.now(UTC) + timedelta(seconds=2)
        asyncio.run(add_tasks(url, base, args.tasks, due=due, interval=True, module="noop"))
        names = [f"n{i}" for i in range(count)] if url else ["shared"]
        with nodes(url, base, names, 256) as up:
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + args.warmup)
            start_us, cpu0 = to_micros(datetime.now(UTC)), up.cpu_seconds()
            time.sleep(args.window)
            end_us, cpu1 = to_micros(datetime.now(UTC)), up.cpu_seconds()
        [(done,)] = asyncio.run(
            query(
                url,
                base,
                "SELECT count(*) FROM executions WHERE status = 'done'"
                f" AND finished_at >= {start_us} AND finished_at < {end_us}",
                "SELECT count(*) FROM executions WHERE status = 'done'"
                f" AND finished_at >= {start_us} AND finished_at < {end_us}",
            )
        )
        seconds = (end_us - start_us) / 1e6
        return done / seconds, (cpu1 - cpu0) / max(done, 1) * 1000


def fire_latency(args: argparse.Namespace, url: str | None, count: int) -> tuple[float, ...]:
    """(p50, p99, max) lateness in ms of 1,000 tasks due at one instant."""
    with state_dir(False, "taskd-bench-cluster-") as base:
        due = datetime.now(UTC) + timedelta(seconds=4 + count)
        asyncio.run(add_tasks(url, base, args.fire_tasks, due=due, interval=False, module="noop"))
        names = [f"n{i}" for i in range(count)] if url else ["shared"]
        with nodes(url, base, names, args.fire_tasks):
            time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 3)
        sql = "SELECT started_at FROM executions WHERE started_at IS NOT NULL"
        started = [row[0] for row in asyncio.run(query(url, base, sql, sql))]
        late = [(from_micros(us) - due).total_seconds() * 1000 for us in started]
        if len(late) < args.fire_tasks:
            print(f"# only {len(late)} of {args.fire_tasks} started", file=sys.stderr)
        return percentile(late, 0.5), percentile(late, 0.99), max(late)


def failover(args: argparse.Namespace, url: str) -> float:
    """Seconds from kill -9 of a node running work to a survivor declaring it dead."""
    with state_dir(False, "taskd-bench-cluster-") as base:
        due = datetime.now(UTC) + timedelta(seconds=1)
        asyncio.run(add_tasks(url, base, 30, due=due, interval=False, module="wait"))
        with nodes(url, base, ["n0", "n1", "n2"], 64) as up:
            time.sleep(3)
            rows = asyncio.run(
                query(url, base, "SELECT node FROM executions WHERE status = 'running'", "")
            )
            victim = str(rows[0][0]) if rows else "n0"
            up.processes[victim].kill()
            killed_us = to_micros(datetime.now(UTC))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                dead = asyncio.run(
                    query(url, base, f"SELECT dead_at FROM nodes WHERE name = '{victim}'", "")
                )
                if dead and dead[0][0] is not None:
                    return (int(dead[0][0]) - killed_us) / 1e6
                time.sleep(0.05)
        raise RuntimeError("no failover within 60 s")


def median_of(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The median of each column."""
    return tuple(statistics.median(column) for column in zip(*runs, strict=True))


def main() -> None:
    """Parse the arguments; run a node, or the measures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--max-running", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--url", help="a PostgreSQL server of yours (default: start one)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks firing every second")
    parser.add_argument("--fire-tasks", type=int, default=1000, help="tasks due at one instant")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--repeat", type=int, default=1, help="runs (medians printed)")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--failover-only", action="store_true", help="only the failover time")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return

    # SIGTERM (timeout, kill): unwind, so the nodes and the server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    server = None
    admin_url = args.url
    if admin_url is None:
        from pg_server import start_server

        server = start_server()
        admin_url = server.url("postgres")
    try:
        print(f"# {python_and_cpus()}, load {load_average():.1f}")
        print(
            f"# {args.tasks} tasks every second, window {args.window:g} s; "
            f"{args.fire_tasks} tasks due at one instant; medians of {args.repeat}"
        )
        print(
            f"{'store':<12} {'nodes':>5} {'exec/s':>8} {'cpu s/1k':>9} "
            f"{'fire p50':>9} {'p99':>8} {'max':>8} {'failover':>9}"
        )
        configs: list[tuple[str, int]] = [("postgresql", n) for n in (1, 2, 3)]
        if not args.skip_sqlite:
            configs.insert(0, ("sqlite", 1))
        if args.failover_only:
            fails = [
                failover(args, fresh_database(admin_url, f"bench_failover_{run}"))
                for run in range(args.repeat)
            ]
            print(
                f"failover: {', '.join(f'{f:.2f}' for f in fails)} s; median "
                f"{statistics.median(fails):.2f} s"
            )
            return
        for store, count in configs:
            rates, fires, fails = [], [], []
            for run in range(args.repeat):
                url = None
                if store == "postgresql":
                    url = fresh_database(admin_url, f"bench_{count}_{run}")
                rates.append(throughput(args, url, count))
                if store == "postgresql":
                    url = fresh_database(admin_url, f"bench_{count}_{run}")
                if count in (1, 3):
                    fires.append(fire_latency(args, url, count))
                if store == "postgresql" and count == 3:
                    url = fresh_database(admin_url, f"bench_{count}_{run}")
                    fails.append((failover(args, url),))
            rate, cpu = median_of(rates)
            fire = median_of(fires) if fires else None
            fire_text = (
                f"{fire[0]:>8.1f}ms {fire[1]:>6.1f}ms {fire[2]:>6.1f}ms" if fire else " " * 28
            )
            fail_text = f"{median_of(fails)[0]:>8.2f}s" if fails else ""
            print(f"{store:<12} {count:>5} {rate:>8.0f} {cpu:>9.2f} {fire_text} {fail_text}")
        print(f"# load {load_average():.1f} at the end")
    finally:
        if server is not None:
            server.stop("immediate")
            import shutil

            shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""taskd beside APScheduler: the same three scenarios, alternating, in one run, with ratios.

Run by hand (`make bench-peers`, or `.venv/bin/python bench/peers/run.py [--repeat 3]`);
not part of `make test`. APScheduler never enters taskd's environment: each peer gets a
virtual environment of its own OUTSIDE the project tree, made on first use and reused while
its requirements stay the same (`--peers-dir`, default `$XDG_CACHE_HOME/taskd-bench-peers`,
else `~/.cache/taskd-bench-peers`):

- `aps3`: APScheduler 3.11 (`apscheduler>=3.11,<3.12`) with SQLAlchemy 2 (its SQLite store);
- `aps4`: APScheduler 4.0.0a6, the newest pre-release (`pip index versions apscheduler
  --pre`), with SQLAlchemy's asyncio extra and aiosqlite.

Each contender runs in a process of its own, one run at a time, in rounds: every round runs
each scenario once for every contender in turn (taskd, then the peers: A B A B ...), so
a change of the machine's speed hits all alike; the table shows the median of `--repeat`
rounds (default 3) and the ratios of those medians. taskd's figures come from its own
benchmarks, run as subprocesses with their command-line flags and read from their tables:

- `fire` - K (`--k`, 1,000) executions due at one instant, p99 lateness of their starts.
  taskd: `bench/fire_latency.py --k K` (the real scheduler loop, every start committed).
  Peers: K date jobs (`aps3.py` / `aps4.py --scenario fire`), memory and SQLite store.
- `throughput` - no-op executions per second. taskd: `bench/throughput.py` (20,000
  executions, everything persisted), both paths: `core` (a manual run, as the API's run
  action and APScheduler's `add_job` without a trigger) and `runner` (the scheduler's).
  Peers: E jobs to run now (memory store: 20,000; SQLite store: `--sqlite-executions`,
  fewer, as it is slow).
- `memory` - resident bytes per scheduled job with nothing due. taskd: `bench/scale.py
  --sizes 0,N` (a daemon with N daily cron tasks in its SQLite store) gives (RSS(N) -
  RSS(0)) / N. Peers: N jobs of the same shape (daily cron at a minute of the day in
  Europe/Berlin, a command line as argument) added to a started scheduler.

Ratios say how many times better taskd is (> 1: taskd better, < 1: the peer): for
lateness and memory peer / taskd, for throughput taskd / peer. Every line ends with the
1-minute load average; the header names the machine, the time and a calibration loop.
Wall-clock figures from a shared machine differ from day to day by up to 2x: compare
ratios from one run only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent

PEERS: dict[str, list[str]] = {
    "aps3": ["apscheduler>=3.11,<3.12", "sqlalchemy>=2"],
    "aps4": ["apscheduler==4.0.0a6", "sqlalchemy[asyncio]>=2", "aiosqlite", "sniffio"],
}
SCRIPTS = {"aps3": HERE / "aps3.py", "aps4": HERE / "aps4.py"}
STAMP = ".taskd-bench-requirements"


# -- the peers' environments ---------------------------------------------------------------


def default_peers_dir() -> Path:
    """`$XDG_CACHE_HOME/taskd-bench-peers`, else `~/.cache/taskd-bench-peers`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "taskd-bench-peers"


def peer_python(peers_dir: Path, name: str) -> Path:
    """The Python of peer `name`'s environment: made (and filled) if missing or if its
    requirements changed, else reused as it is."""
    env = peers_dir / name
    python = env / "bin" / "python"
    wanted = "\n".join(PEERS[name]) + "\n"
    stamp = env / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"# making {env} (once): {' '.join(PEERS[name])}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)  # not taskd's venv
    subprocess.run([base, "-m", "venv", "--clear", str(env)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + PEERS[name],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def installed_version(python: Path) -> str:
    """The APScheduler version in an environment."""
    done = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version; print(version('apscheduler'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


# -- running one contender once --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contender:
    """One line of the table: who, in which scenario, and how to get its figure."""

    scenario: str  # fire, throughput, memory
    name: str  # "taskd (core path)", "APScheduler 3.11.3, memory store", ...
    run: Callable[[], float]  # one run -> the scenario's figure
    is_taskd: bool = False


def run_text(command: list[str], timeout: float) -> str:
    """A command's stdout (RuntimeError with its stderr if it fails)."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


_NUMBER = r"[-\d.]+"


def taskd_fire(k: int, timeout: float) -> float:
    """p99 lateness (ms) from one `bench/fire_latency.py --k K` run."""
    out = run_text([sys.executable, str(BENCH / "fire_latency.py"), "--k", str(k)], timeout)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[0] == str(k) and re.fullmatch(_NUMBER, fields[2]):
            return float(fields[2])  # K, p50, p99, ...
    raise RuntimeError(f"no K = {k} line in fire_latency.py's output:\n{out}")


def taskd_throughput(path: str, timeout: float) -> float:
    """Executions per second from one `bench/throughput.py --path PATH` run."""
    out = run_text([sys.executable, str(BENCH / "throughput.py"), "--path", path], timeout)
    for line in out.splitlines():
        fields = line.split()
        # execs, seconds, execs/s, ...
        if len(fields) > 3 and fields[0].isdigit() and re.fullmatch(_NUMBER, fields[2]):
            return float(fields[2])
    raise RuntimeError(f"no result line in throughput.py's output:\n{out}")


def taskd_memory(tasks: int, timeout: float) -> float:
    """Resident bytes per task: (RSS with `tasks` - RSS with none) / tasks, from one
    `bench/scale.py --sizes 0,N` run."""
    out = run_text(
        [sys.executable, str(BENCH / "scale.py"), "--sizes", f"0,{tasks}", "--idle-sec", "1"],
        timeout,
    )
    rss: dict[int, float] = {}
    for line in out.splitlines():
        fields = line.split()
        # tasks, insert s, db MB, opened s, start s, cpu s, RSS MB, ...
        if len(fields) > 7 and fields[0].isdigit() and re.fullmatch(_NUMBER, fields[6]):
            rss[int(fields[0])] = float(fields[6])
    if 0 not in rss or tasks not in rss:
        raise RuntimeError(f"no RSS for 0 and {tasks} tasks in scale.py's output:\n{out}")
    return (rss[tasks] - rss[0]) * 1e6 / tasks


def peer_figure(python: Path, script: Path, key: str, timeout: float, *options: str) -> float:
    """One figure (`key` of its JSON line) of a peer script, run in a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="taskd-bench-peer-") as directory:
        out = run_text(
            [str(python), str(script), "--dir", directory, "--timeout", str(timeout), *options],
            timeout + 60,
        )
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{script.name} printed no figures:\n{out}")
    return float(json.loads(lines[-1])[key])


# -- the table -------------------------------------------------------------------------------

UNITS = {"fire": "p99 ms", "throughput": "execs/s", "memory": "B/job"}
HIGHER_IS_BETTER = {"fire": False, "throughput": True, "memory": False}


def advantage(scenario: str, taskd: float, peer: float) -> float:
    """How many times better taskd is than the peer (> 1: taskd better)."""
    if taskd <= 0 or peer <= 0:
        return math.nan
    return taskd / peer if HIGHER_IS_BETTER[scenario] else peer / taskd


def fmt(value: float) -> str:
    """A figure with as many digits as it deserves."""
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def calibration_ms() -> float:
    """CPU ms of a fixed 1M-iteration loop: how fast the CPU is right now (as in
    bench/_common.py, repeated here so this script imports nothing from taskd)."""
    started = time.thread_time()
    total = 0
    for number in range(1_000_000):
        total += number
    return (time.thread_time() - started) * 1000


def machine() -> str:
    """CPU model, count, Python, kernel."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def contenders(args: argparse.Namespace, pythons: dict[str, Path]) -> list[Contender]:
    """Every (scenario, contender) pair, in the order each round runs them."""
    t = args.timeout
    labels = {name: f"APScheduler {installed_version(python)}" for name, python in pythons.items()}

    def peers(scenario: str, key: str, size_flag: str, sizes: dict[str, int]) -> list[Contender]:
        """The peers' contenders of `scenario`: each peer with each store; `sizes` by
        store, at most `sizes["aps4"]` for 4.x (slow), if given."""
        found = []
        for name, python in pythons.items():
            for store in ("memory", "sqlite"):
                size = sizes[store]
                if name == "aps4" and "aps4" in sizes:
                    size = min(size, sizes["aps4"])
                run = functools.partial(
                    peer_figure, python, SCRIPTS[name], key, t,
                    "--scenario", scenario, "--store", store, size_flag, str(size),
                )  # fmt: skip
                what = {"fire": "", "throughput": f" ({size:,} runs)"}.get(
                    scenario, f" ({size:,} jobs)"
                )
                found.append(Contender(scenario, f"{labels[name]}, {store} store{what}", run))
        return found

    lineup: list[Contender] = []
    if "fire" in args.scenarios:
        lineup.append(
            Contender("fire", "taskd", functools.partial(taskd_fire, args.k, t), is_taskd=True)
        )
        lineup += peers("fire", "p99_ms", "--k", {"memory": args.k, "sqlite": args.k})
    if "throughput" in args.scenarios:
        lineup.append(
            Contender(
                "throughput",
                "taskd (core path)",
                functools.partial(taskd_throughput, "core", t),
                is_taskd=True,
            )
        )
        lineup.append(
            Contender(
                "throughput",
                "taskd (runner path)",
                functools.partial(taskd_throughput, "runner", t),
            )
        )
        sizes = {
            "memory": args.executions,
            "sqlite": args.sqlite_executions,
            "aps4": args.aps4_executions,
        }
        lineup += peers("throughput", "per_sec", "--executions", sizes)
    if "memory" in args.scenarios:
        lineup.append(
            Contender(
                "memory",
                f"taskd ({args.jobs:,} tasks)",
                functools.partial(taskd_memory, args.jobs, t),
                is_taskd=True,
            )
        )
        sizes = {"memory": args.jobs, "sqlite": args.sqlite_jobs, "aps4": args.aps4_jobs}
        lineup += peers("memory", "bytes_per_job", "--jobs", sizes)
    return lineup


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are shown)")
    parser.add_argument("--peers", default="aps3,aps4", help="comma-separated: aps3, aps4")
    parser.add_argument(
        "--scenarios", default="fire,throughput,memory", help="comma-separated subset"
    )
    parser.add_argument("--k", type=int, default=1000, help="executions due at one instant")
    parser.add_argument("--executions", type=int, default=20_000, help="runs, memory store")
    parser.add_argument(
        "--sqlite-executions", type=int, default=1000, help="runs, peers' SQLite store"
    )
    parser.add_argument(
        "--aps4-executions", type=int, default=2000, help="at most this many runs for 4.x"
    )
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs for the memory figure")
    parser.add_argument(
        "--sqlite-jobs", type=int, default=1000, help="jobs, peers' SQLite store (slow adds)"
    )
    parser.add_argument("--aps4-jobs", type=int, default=10_000, help="at most this many, 4.x")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=default_peers_dir(),
        help="where the peers' virtual environments live (default: %(default)s)",
    )
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))} (known: {', '.join(PEERS)})")
    bad = set(args.scenarios) - set(UNITS)
    if bad:
        parser.error(f"unknown scenarios: {', '.join(sorted(bad))}")
    peers_dir = args.peers_dir.resolve()
    if peers_dir == ROOT or ROOT in peers_dir.parents:
        parser.error(f"--peers-dir {peers_dir} is inside the project: pick one outside it")
    args.peers_dir = peers_dir
    return args


def main() -> None:
    """Make or reuse the peers' environments, run the rounds, print the tables."""
    args = parse_args()
    pythons = {name: peer_python(args.peers_dir, name) for name in args.peers}
    if shutil.which("git"):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    else:
        commit = "?"
    started = datetime.now(UTC)
    print(f"# taskd vs APScheduler: {machine()}; taskd at {commit or '?'}")
    print(
        f"# {started:%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.2f},"
        f" calibration {calibration_ms():.0f} ms; rounds {args.repeat}, K = {args.k},"
        f" peers' environments in {args.peers_dir}"
    )
    lineup = contenders(args, pythons)
    figures: dict[int, list[float]] = {index: [] for index in range(len(lineup))}
    for round_number in range(1, args.repeat + 1):
        for index, contender in enumerate(lineup):
            try:
                value = contender.run()
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"# round {round_number}: {contender.name} failed: {error}", flush=True)
                value = math.nan
            figures[index].append(value)
            print(
                f"# round {round_number}: {contender.scenario:<10} {contender.name:<50}"
                f" {fmt(value):>10} {UNITS[contender.scenario]:<8}"
                f" load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finished = datetime.now(UTC)
    print()
    print(f"| scenario | contender | median | the {args.repeat} runs | taskd better by |")
    print("|---|---|---|---|---|")
    taskd_median: dict[str, float] = {}
    for index, contender in enumerate(lineup):
        values = [v for v in figures[index] if not math.isnan(v)]
        median = statistics.median(values) if values else math.nan
        if contender.is_taskd:
            taskd_median[contender.scenario] = median
        ratio = ""
        if not contender.name.startswith("taskd"):
            base = taskd_median.get(contender.scenario, math.nan)
            ratio = f"{advantage(contender.scenario, base, median):.2f}x"
        runs = " / ".join(fmt(v) for v in figures[index])
        print(
            f"| {contender.scenario} ({UNITS[contender.scenario]}) | {contender.name}"
            f" | {fmt(median)} | {runs} | {ratio} |"
        )
    print()
    print(
        f"# {started:%H:%M}-{finished:%H:%M} UTC, load now {os.getloadavg()[0]:.2f};"
        " 'taskd better by' > 1: taskd better (lateness, memory: peer / taskd; throughput:"
        " taskd / peer); taskd's throughput ratio is its core path's."
    )


if __name__ == "__main__":
    main()

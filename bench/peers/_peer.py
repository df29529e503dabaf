"""What the APScheduler 3.x and 4.x sides of `bench/peers/run.py` share: the jobs, the
measurements and the command line. Runs with a peer virtual environment's Python (imported
by `aps3.py` / `aps4.py` from their own folder); it imports nothing from taskd."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

STARTS: list[float] = []
WARM_UP = 20  # jobs added before the memory scenario's first reading


async def noop() -> None:
    """The job: note when it started (module level, so a persistent store can name it)."""
    STARTS.append(time.time())


async def export(argv: list[str]) -> None:
    """The memory scenario's job (never due while measured)."""
    STARTS.append(time.time())


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    index = max(0, min(len(values) - 1, round(fraction * len(values) + 0.5) - 1))
    return values[index]


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def wait_for(count: int, seconds: float) -> None:
    """Until `count` starts were noted (RuntimeError after `seconds`)."""
    deadline = time.monotonic() + seconds
    while len(STARTS) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(STARTS)} of {count} jobs ran within {seconds} s")
        await asyncio.sleep(0.005)


def lateness_figures(instant: float, added_at: float) -> dict[str, Any]:
    """The fire scenario's figures: lateness of the noted starts after `instant`, in ms."""
    lateness = sorted(1000 * (start - instant) for start in STARTS)
    return {
        "p50_ms": percentile(lateness, 0.50),
        "p99_ms": percentile(lateness, 0.99),
        "max_ms": lateness[-1],
        "lead_ms": 1000 * (instant - added_at),
    }


Scenario = Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]


def main(description: str, scenarios: Mapping[str, Scenario]) -> None:
    """Run the scenario the command line names and print its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", choices=tuple(scenarios), required=True)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--dir", type=Path, required=True, help="a fresh directory for files")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--lead", type=float, default=2.0)
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    figures = asyncio.run(scenarios[args.scenario](args))
    figures.update(peer=f"APScheduler {version('apscheduler')}", python=sys.version.split()[0])
    print(json.dumps(figures), flush=True)

"""APScheduler 4.x (pre-release) side of `bench/peers/run.py`: one scenario per process,
one JSON line out.

Runs with its own peer virtual environment's Python (APScheduler 4.0.0a6, SQLAlchemy with
asyncio, aiosqlite), never with taskd's. The scenarios and their figures are those of
`aps3.py` (see there), on an `AsyncScheduler`:

- `fire`: K schedules with a `DateTrigger` at one instant (`misfire_grace_time` 1 h),
  `max_concurrent_jobs` = K (taskd's benchmark runs with `max_running` = K);
- `throughput`: E jobs added with `add_job` (run once, now), `max_concurrent_jobs` 64 (as
  taskd's `max_running` in bench/throughput.py); the clock stops at the last start;
- `memory`: N schedules as bench/scale.py's tasks (daily cron in Europe/Berlin).

`--store memory` (`MemoryDataStore`, the default) or `--store sqlite`
(`SQLAlchemyDataStore` on `sqlite+aiosqlite:///` a fresh file in `--dir`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _peer import WARM_UP, export, lateness_figures, main, noop, rss_bytes, wait_for
from apscheduler import AsyncScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger


def make_scheduler(store: str, directory: Path, max_jobs: int) -> AsyncScheduler:
    """An AsyncScheduler on the given data store."""
    if store == "memory":
        from apscheduler.datastores.memory import MemoryDataStore

        data_store: Any = MemoryDataStore()
    else:
        from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore

        data_store = SQLAlchemyDataStore(f"sqlite+aiosqlite:///{directory / 'jobs.sqlite'}")
    return AsyncScheduler(data_store, max_concurrent_jobs=max_jobs)


async def fire(args: argparse.Namespace) -> dict[str, Any]:
    """K schedules due at one instant: lateness of their starts."""
    # How long adding K schedules takes, from a first batch on a scheduler of its own.
    probe_dir = args.dir / "probe"
    probe_dir.mkdir()
    async with make_scheduler(args.store, probe_dir, args.k) as prober:
        await prober.start_in_background()
        probe = min(50, args.k)
        far = datetime.fromtimestamp(time.time() + 86_400, UTC)
        began = time.perf_counter()
        for index in range(probe):
            await prober.add_schedule(noop, DateTrigger(far), id=f"probe-{index}")
        per_job = (time.perf_counter() - began) / probe
        await prober.stop()
    async with make_scheduler(args.store, args.dir, args.k) as scheduler:
        await scheduler.start_in_background()
        instant = time.time() + per_job * args.k * 1.2 + args.lead
        run_time = datetime.fromtimestamp(instant, UTC)
        for index in range(args.k):
            # A trigger object each: a trigger keeps its state (a date fires once).
            await scheduler.add_schedule(
                noop, DateTrigger(run_time), id=f"fire-{index}", misfire_grace_time=3600
            )
        added_at = time.time()
        await wait_for(args.k, args.timeout + max(0.0, instant - time.time()))
        await scheduler.stop()
    return lateness_figures(instant, added_at)


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """E jobs to run now: executions per second until the last one started."""
    async with make_scheduler(args.store, args.dir, 64) as scheduler:
        await scheduler.start_in_background()
        began = time.perf_counter()
        for _ in range(args.executions):
            await scheduler.add_job(noop)
        await wait_for(args.executions, args.timeout)
        seconds = time.perf_counter() - began
        await scheduler.stop()
    return {"executions": args.executions, "seconds": seconds, "per_sec": args.executions / seconds}


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    """N daily schedules, nothing due: RSS bytes per schedule."""
    async with make_scheduler(args.store, args.dir, 100) as scheduler:
        await scheduler.start_in_background()
        for index in range(WARM_UP):  # first use of the store (SQLAlchemy's caches) apart
            await scheduler.add_schedule(
                export, CronTrigger(hour=1), id=f"warm-{index}", args=[["warm"]]
            )
        await asyncio.sleep(0.1)
        gc.collect()
        before = rss_bytes()
        for index in range(args.jobs):
            name = f"export-{index:07d}"
            await scheduler.add_schedule(
                export,
                CronTrigger(minute=index % 60, hour=(index // 60) % 24, timezone="Europe/Berlin"),
                id=name,
                args=[["/usr/local/bin/export", "--customer", name]],
                misfire_grace_time=3600,
            )
        await asyncio.sleep(0.1)
        gc.collect()
        after = rss_bytes()
        count = len(await scheduler.get_schedules()) - WARM_UP
        await scheduler.stop()
    if count != args.jobs:
        raise RuntimeError(f"{count} of {args.jobs} schedules stored")
    return {"jobs": args.jobs, "bytes_per_job": (after - before) / args.jobs}


if __name__ == "__main__":
    main(
        (__doc__ or "").splitlines()[0],
        {"fire": fire, "throughput": throughput, "memory": memory},
    )

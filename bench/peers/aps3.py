"""APScheduler 3.x side of `bench/peers/run.py`: one scenario per process, one JSON line out.

Runs with the peer virtual environment's Python (APScheduler 3.11 and SQLAlchemy), never
with taskd's: it imports nothing from taskd. Scenarios (`--scenario`):

- `fire`: K date jobs (an `async def` no-op noting `time.time()` first thing) all due at one
  instant, on an `AsyncIOScheduler` with the `AsyncIOExecutor` (coroutines run on the event
  loop, as taskd's modules do); `misfire_grace_time` 1 h, no coalescing. The instant is
  `--lead` seconds after the last job was added (the adding time of a first batch
  estimates when that is). Lateness = noted time - instant: p50, p99, max in ms.
- `throughput`: E jobs without a trigger (run once, now) added as fast as the loop allows
  while the scheduler runs; executions/s = E / (time from the first add until the last
  job's run noted its start and every job left the store).
- `memory`: N jobs added to a started scheduler, as `bench/scale.py`'s tasks (a daily cron
  at a minute of the day in Europe/Berlin, a command line as argument; nothing due while
  measured); bytes per job = (VmRSS after - VmRSS before) / N, after a full GC each time, the
  first reading taken after `WARM_UP` jobs (the store's first use apart).

`--store memory` (`MemoryJobStore`) or `--store sqlite` (`SQLAlchemyJobStore` on a fresh
SQLite file in `--dir`: every add, run and removal is a committed row, as in taskd).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from pathlib import Path
from typing import Any

from _peer import WARM_UP, export, lateness_figures, main, noop, rss_bytes, wait_for
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler


def make_scheduler(store: str, directory: Path) -> AsyncIOScheduler:
    """An AsyncIOScheduler with the given job store and the asyncio executor."""
    if store == "memory":
        from apscheduler.jobstores.memory import MemoryJobStore

        jobstore: Any = MemoryJobStore()
    else:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        jobstore = SQLAlchemyJobStore(url=f"sqlite:///{directory / 'jobs.sqlite'}")
    return AsyncIOScheduler(
        jobstores={"default": jobstore},
        executors={"default": AsyncIOExecutor()},
        job_defaults={"misfire_grace_time": 3600, "coalesce": False, "max_instances": 1},
        timezone="UTC",
    )


async def fire(args: argparse.Namespace) -> dict[str, Any]:
    """K jobs due at one instant: lateness of their starts."""
    from datetime import UTC, datetime

    scheduler = make_scheduler(args.store, args.dir)
    scheduler.start()
    # Estimate how long adding K jobs takes from a first batch (due far ahead, removed).
    probe = min(50, args.k)
    began = time.perf_counter()
    far = datetime.fromtimestamp(time.time() + 86_400, UTC)
    for index in range(probe):
        scheduler.add_job(noop, "date", run_date=far, id=f"probe-{index}")
    per_job = (time.perf_counter() - began) / probe
    for index in range(probe):
        scheduler.remove_job(f"probe-{index}")
    instant = time.time() + per_job * args.k * 1.2 + args.lead
    run_date = datetime.fromtimestamp(instant, UTC)
    for index in range(args.k):
        scheduler.add_job(noop, "date", run_date=run_date, id=f"fire-{index}")
    added_at = time.time()
    await wait_for(args.k, args.timeout + max(0.0, instant - time.time()))
    scheduler.shutdown(wait=False)
    return lateness_figures(instant, added_at)


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """E jobs to run now: executions per second until the last one ran."""
    scheduler = make_scheduler(args.store, args.dir)
    scheduler.start()
    began = time.perf_counter()
    for index in range(args.executions):
        scheduler.add_job(noop, id=f"run-{index}")
        if index % 100 == 99:
            await asyncio.sleep(0)  # let the scheduler run what is due meanwhile
    await wait_for(args.executions, args.timeout)
    while scheduler.get_jobs():  # a date job leaves the store once it ran
        if time.perf_counter() - began > args.timeout:
            raise RuntimeError("jobs still in the store after the timeout")
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - began
    scheduler.shutdown(wait=False)
    return {"executions": args.executions, "seconds": seconds, "per_sec": args.executions / seconds}


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    """N daily cron jobs, nothing due: RSS bytes per job."""
    scheduler = make_scheduler(args.store, args.dir)
    scheduler.start()
    for index in range(WARM_UP):  # first use of the store (SQLAlchemy's caches) apart
        scheduler.add_job(export, "cron", hour=1, args=[["warm"]], id=f"warm-{index}")
    await asyncio.sleep(0.1)
    gc.collect()
    before = rss_bytes()
    for index in range(args.jobs):
        # As bench/scale.py's tasks: a daily cron at a minute of the day, in Europe/Berlin,
        # with a command line as its argument.
        name = f"export-{index:07d}"
        scheduler.add_job(
            export,
            "cron",
            minute=index % 60,
            hour=(index // 60) % 24,
            timezone="Europe/Berlin",
            args=[["/usr/local/bin/export", "--customer", name]],
            id=name,
            name=name,
            misfire_grace_time=3600,
        )
    await asyncio.sleep(0.1)
    gc.collect()
    after = rss_bytes()
    count = len(scheduler.get_jobs()) - WARM_UP
    scheduler.shutdown(wait=False)
    if count != args.jobs:
        raise RuntimeError(f"{count} of {args.jobs} jobs stored")
    return {"jobs": args.jobs, "bytes_per_job": (after - before) / args.jobs}


if __name__ == "__main__":
    main(
        (__doc__ or "").splitlines()[0],
        {"fire": fire, "throughput": throughput, "memory": memory},
    )

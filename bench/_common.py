"""Helpers the benchmarks share: how loaded and how fast the machine is, CPU per thread."""

from __future__ import annotations

import contextlib
import os
import time


def load_average() -> float:
    """The 1-minute load average (other work on the machine skews the figures)."""
    return os.getloadavg()[0]


def calibration_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop: how fast this CPU is right now.

    On a shared machine (SMT siblings, other load) it varies between runs; figures taken
    at different times compare only together with it.
    """
    started = time.thread_time()
    total = 0
    for number in range(1_000_000):
        total += number
    return (time.thread_time() - started) * 1000


def thread_cpu_seconds(pid: int, main_tid: int | None = None) -> tuple[float, float]:
    """CPU seconds (user + system) of a process's main thread and of all its other threads.

    `main_tid` is the main thread's id (the pid itself unless given).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    main_tid = pid if main_tid is None else main_tid
    main = other = 0.0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{entry.path}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue  # the thread ended meanwhile
            seconds = (int(fields[11]) + int(fields[12])) / ticks
            if int(entry.name) == main_tid:
                main += seconds
            else:
                other += seconds
    return main, other

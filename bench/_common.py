"""Helpers the benchmarks share: how loaded and how fast the machine is, CPU per thread,
percentiles, temporary state dirs, taskd's logging set up for a benchmark."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import structlog

from taskd.daemon import configure_logging


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


def python_and_cpus() -> str:
    """`CPython 3.x.y, N CPUs`: the start of the benchmarks' header lines."""
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (`fraction` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@contextlib.contextmanager
def state_dir(keep: bool, prefix: str) -> Iterator[Path]:
    """A fresh temporary directory named `prefix...`, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"# kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def configure_bench_logging(mode: str, log_file: TextIO) -> None:
    """Log like `taskd serve` (JSON lines) into `log_file`; `none` keeps only critical."""
    configure_logging(json_lines=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=log_file))
    if mode == "none":
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_private(path: Path, text: str) -> None:
    """Write `text` to the file `path`, mode 0600 (taskd refuses readable key files)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def daemon_toml(port: int, *, shutdown_grace_sec: float = 1) -> str:
    """The `[daemon]` and `[api]` tables of a benchmark's daemon: its state in `state/` next
    to the config, TCP on 127.0.0.1:`port` only (no Unix socket)."""
    return f"""\
[daemon]
state_dir = "state"
shutdown_grace_sec = {shutdown_grace_sec:g}
stop_grace_sec = 1

[api]
listen = ["127.0.0.1:{port}"]
unix_socket = false
"""

"""Benchmark: copy throughput of the `files` module beside `cp -r` of the same tree.

Run by hand: `.venv/bin/python bench/files.py [--small N] [--small-kib K] [--big N]
[--big-mib M] [--repeat R] [--dir DIR]`.

It writes a tree of random data into a temporary folder (default: 2,000 files of 64 KiB in
20 folders and 4 files of 64 MiB, 381 MiB in all) and copies it R times each way:

- `cp -r` (GNU coreutils; no fsync), and `cp -r` followed by `sync -f` on the destination
  (the data on disk, as taskd leaves it);
- the files module as the daemon runs it (`FilesModule.run` with a context whose progress
  and log calls are counted, not stored): without a checksum, with `xxhash64`, with `md5`
  (computed while copying and verified by reading the copy back), `parallel` 1 and 4.

Each copy goes to a fresh destination; the source stays in the page cache (it is read once
before the first run), so the figures compare the copying, not the disk's read speed.
Columns: median wall seconds, MB/s (10^6 bytes of file data per second), CPU seconds of the
copy (taskd: process CPU time of this process, worker threads included; cp: the children's
CPU time), and the ratio of taskd's wall time to `cp -r` + sync. The machine is shared: the
load average and a CPU calibration are printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import calibration_ms, load_average, python_and_cpus

from taskd.modules.files import FilesModule
from taskd.modules.registry import ModuleRegistry
from taskd.testing import FakeContext


class CountingContext(FakeContext):
    """Counts log lines and progress reports instead of keeping them (10,000s of lines)."""

    lines = 0
    reports = 0

    def log(self, level: Any, msg: str) -> None:
        """Count the line."""
        self.lines += 1

    def progress(self, **fields: Any) -> None:
        """Count the report."""
        self.reports += 1


def make_tree(root: Path, small: int, small_kib: int, big: int, big_mib: int) -> int:
    """Write the source tree; return its size in bytes."""
    total = 0
    for i in range(small):
        folder = root / f"dir{i % 20:02}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"small{i:05}.bin").write_bytes(os.urandom(small_kib * 1024))
        total += small_kib * 1024
    block = os.urandom(1 << 20)
    for i in range(big):
        with (root / f"big{i}.bin").open("wb") as file:
            for n in range(big_mib):
                file.write(block[n % 251 :] + block[: n % 251])  # no two MiB alike
        total += big_mib << 20
    return total


def read_all(root: Path) -> None:
    """Read every file once, so each run finds the source in the page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                while file.read(1 << 20):
                    pass


def time_cp(src: Path, dst: Path, sync: bool) -> tuple[float, float]:
    """Wall and children's CPU seconds of `cp -r` (and `sync -f` if asked)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    if sync:
        subprocess.run(["sync", "-f", str(dst)], check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def time_module(src: Path, dst: Path, checksum: str | None, parallel: int) -> tuple[float, float]:
    """Wall and process CPU seconds of the files module copying `src` into `dst`."""
    options: dict[str, Any] = {"parallel": parallel}
    if checksum:
        options["file_checksum"] = checksum
    raw = {
        "sources": [{"type": "local", "path": str(src)}],
        "destination": {"type": "local", "path": str(dst)},
        "action": "copy",
    }
    params = ModuleRegistry.builtin().validate("files", raw, task={"options": options})
    ctx = CountingContext(params=params, task_options=options)
    cpu_before = time.process_time()
    started = time.perf_counter()
    asyncio.run(FilesModule().run(ctx))
    return time.perf_counter() - started, time.process_time() - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="small files (2000)")
    parser.add_argument("--small-kib", type=int, default=64, help="size of each, KiB (64)")
    parser.add_argument("--big", type=int, default=4, help="big files (4)")
    parser.add_argument("--big-mib", type=int, default=64, help="size of each, MiB (64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way (3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="taskd-bench-files-", dir=args.dir))
    try:
        src = work / "src"
        size = make_tree(src, args.small, args.small_kib, args.big, args.big_mib)
        read_all(src)
        files = args.small + args.big
        print(f"taskd bench/files.py  {python_and_cpus()}  in {work}")
        print(
            f"tree: {files} files, {size / 1e6:.1f} MB ({args.small} x {args.small_kib} KiB,"
            f" {args.big} x {args.big_mib} MiB); {args.repeat} runs each, median"
        )
        print(f"load average {load_average():.2f}, calibration {calibration_ms():.0f} ms")
        ways: list[tuple[str, Callable[[Path], tuple[float, float]]]] = [
            ("cp -r", lambda dst: time_cp(src, dst, sync=False)),
            ("cp -r + sync", lambda dst: time_cp(src, dst, sync=True)),
            ("files", lambda dst: time_module(src, dst, None, 1)),
            ("files parallel=4", lambda dst: time_module(src, dst, None, 4)),
            ("files xxhash64", lambda dst: time_module(src, dst, "xxhash64", 1)),
            ("files xxhash64 parallel=4", lambda dst: time_module(src, dst, "xxhash64", 4)),
            ("files md5", lambda dst: time_module(src, dst, "md5", 1)),
        ]
        results: dict[str, tuple[float, float]] = {}
        print(f"{'way':<28}{'wall s':>9}{'MB/s':>9}{'cpu s':>9}{'/ cp+sync':>11}")
        for name, copy in ways:
            walls, cpus = [], []
            for run in range(args.repeat):
                dst = work / f"dst-{len(results)}-{run}"
                wall, cpu = copy(dst)
                walls.append(wall)
                cpus.append(cpu)
                shutil.rmtree(dst)
            results[name] = (statistics.median(walls), statistics.median(cpus))
            wall, cpu = results[name]
            reference = results.get("cp -r + sync")
            ratio = f"{wall / reference[0]:>11.2f}" if reference else f"{'-':>11}"
            print(f"{name:<28}{wall:>9.2f}{size / 1e6 / wall:>9.0f}{cpu:>9.2f}{ratio}")
        print(f"load average after: {load_average():.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

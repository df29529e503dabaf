"""Ending a process group left behind by a crash (`taskd.processes`), on real processes.

Each test starts its own group (a new session) and kills whatever of it is left at the end.
Waiting for a process to die is an OS edge: `end_group` polls /proc, bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd.processes import end_group, process_start

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


Spawn = Callable[[list[str]], "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start commands in their own sessions; kill and reap them all after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE)
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        assert process.stdout is not None
        process.stdout.close()


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_process_start_names_the_boot_and_the_start_tick(spawn: Spawn) -> None:
    """process_start is "<boot id>:<ticks>", stable for a process; None for no process."""
    process = spawn(["sleep", "1000"])
    start = process_start(process.pid)
    assert start is not None
    boot, _, ticks = start.partition(":")
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert ticks.isdigit()
    assert process_start(process.pid) == start
    process.kill()
    process.wait(5)
    assert process_start(process.pid) is None


def test_a_surviving_group_is_ended_with_sigterm(spawn: Spawn) -> None:
    """The leader and its children get SIGTERM and are gone when end_group returns."""
    process = spawn(["sh", "-c", "sleep 1000 & echo $!; wait"])
    assert process.stdout is not None
    child = int(process.stdout.readline())
    start = process_start(process.pid)
    assert start is not None
    outcome = end_group(process.pid, start, 5.0)
    assert outcome == "ended 2 process(es) with SIGTERM"
    assert process.wait(5) == -signal.SIGTERM
    assert not alive(child)


@pytest.mark.slow
def test_a_group_ignoring_sigterm_gets_sigkill_after_the_grace(spawn: Spawn) -> None:
    """A command that ignores SIGTERM is killed once the grace has passed."""
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print(1, flush=True); time.sleep(1000)"
    )
    process = spawn([sys.executable, "-c", script])
    assert process.stdout is not None
    process.stdout.readline()  # SIGTERM is ignored from here on
    start = process_start(process.pid)
    assert start is not None
    assert end_group(process.pid, start, 0.3) == "ended 1 process(es): SIGKILL after 0.3 s"
    assert process.wait(5) == -signal.SIGKILL


def test_what_is_left_after_the_leader_exited_is_ended(spawn: Spawn) -> None:
    """The leader exited, its background child kept the group: the child is ended."""
    process = spawn(["sh", "-c", "sleep 1000 & echo $!"])
    start = process_start(process.pid)
    assert start is not None
    assert process.stdout is not None
    child = int(process.stdout.readline())
    assert process.wait(5) == 0
    assert alive(child)
    assert end_group(process.pid, start, 5.0) == "ended 1 process(es) with SIGTERM"
    assert not alive(child)


def test_a_reused_pid_is_left_alone(spawn: Spawn) -> None:
    """A live process with the pid but another start time is not the recorded group."""
    process = spawn(["sleep", "1000"])
    start = process_start(process.pid)
    assert start is not None
    boot, _, ticks = start.partition(":")
    outcome = end_group(process.pid, f"{boot}:{int(ticks) - 1}", 0.1)
    assert outcome.startswith("not running (pid")
    assert alive(process.pid)


def test_a_group_of_another_boot_is_left_alone(spawn: Spawn) -> None:
    """A group recorded before the machine restarted cannot be running: nothing is sent."""
    process = spawn(["sleep", "1000"])
    start = process_start(process.pid)
    assert start is not None
    _, _, ticks = start.partition(":")
    assert end_group(process.pid, f"another-boot:{ticks}", 0.1).startswith("not running")
    assert alive(process.pid)


def test_a_group_that_ended_already_is_not_running(spawn: Spawn) -> None:
    """Nothing left of the group: end_group says so and signals nothing."""
    process = spawn(["true"])
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    process.wait(5)
    start = f"{boot}:1"
    assert end_group(process.pid, start, 0.1) == "not running"
